import { finishedAt, listOrder, progressOf, type Progress, type SessionFile } from '../session/session.js'

/** What lists, stats and retention need of an archived session, without its tasks. */
export interface ArchivedSummary extends Progress {
  session_id: string
  created_at: string
  updated_at: string
  /** The last `completed_at` (retention counts from it); `updated_at` for a file with none. */
  finished_at: string
  /** The archived file it was read from. */
  file: string
}

/** Retention cutoffs: archived sessions that finished before theirs are deleted; null keeps them. */
export interface RetentionCutoffs {
  all: Date | null
  /** For sessions with at least one Failed task. */
  failed: Date | null
}

export function summarize (file: SessionFile, name: string): ArchivedSummary {
  return {
    session_id: file.session_id,
    created_at: file.created_at,
    updated_at: file.updated_at,
    ...progressOf(file.session.tasks),
    finished_at: finishedAt(file) ?? file.updated_at,
    file: name
  }
}

/** One file of an archived session. Normally the only one; see ArchiveIndex. */
export interface ArchivedFile {
  name: string
  bytes: number
  /** The `<ms>` of `<id>.<ms>.json`; 0 for `<id>.json`. Orders the files of one id. */
  stamp: number
}

export interface ArchiveTotals {
  /** Ids with at least one archived file. */
  sessions: number
  files: number
  bytes: number
}

interface Entry {
  /** Oldest first; the last one is the session as the API shows it. */
  files: ArchivedFile[]
  /** Of the newest file; null until it has been read (the index is built from names and sizes). */
  summary: ArchivedSummary | null
}

/**
 * The archive folder in memory: which ids it holds, in which files, how big, and (once read)
 * each one's summary. Archived sessions themselves are never kept in memory.
 *
 * An id usually has one file. It has more when an archive found the name taken (the older
 * file is never replaced; the newer one is `<id>.<ms>.json`), which happens only after a
 * crash or hand edits; the newest file is then the archived session.
 */
export class ArchiveIndex {
  private readonly entries = new Map<string, Entry>()
  private readonly totals: ArchiveTotals = { sessions: 0, files: 0, bytes: 0 }
  /** summaries() as last sorted; null once a summary changed. Lists read it far more often than archives change it. */
  private sorted: readonly ArchivedSummary[] | null = null

  add (sessionId: string, file: ArchivedFile, summary: ArchivedSummary | null): void {
    let entry = this.entries.get(sessionId)
    if (entry === undefined) {
      entry = { files: [], summary: null }
      this.entries.set(sessionId, entry)
      this.totals.sessions++
    }
    const files = entry.files
    const at = files.findIndex((other) => other.stamp > file.stamp)
    files.splice(at === -1 ? files.length : at, 0, file)
    this.totals.files++
    this.totals.bytes += file.bytes
    if (files.at(-1) === file) this.summarize(entry, summary)
  }

  /** The file the API shows for `sessionId`, or null when it is not archived. */
  newest (sessionId: string): ArchivedFile | null {
    return this.entries.get(sessionId)?.files.at(-1) ?? null
  }

  /** The summary of the session's newest file, once that file has been read; else null. */
  summary (sessionId: string): ArchivedSummary | null {
    return this.entries.get(sessionId)?.summary ?? null
  }

  files (sessionId: string): readonly ArchivedFile[] {
    return this.entries.get(sessionId)?.files ?? []
  }

  /** Records the summary read from `name`, if that file is still the newest of its id. */
  setSummary (sessionId: string, name: string, summary: ArchivedSummary): void {
    const entry = this.entries.get(sessionId)
    if (entry !== undefined && entry.files.at(-1)?.name === name) this.summarize(entry, summary)
  }

  /**
   * Records the summary read from `file` (an entry newest() gave), if that very entry is still
   * the newest: a read that took long may have read a file since removed and archived again
   * under the same name, whose summary it must not replace.
   */
  setSummaryOf (sessionId: string, file: ArchivedFile, summary: ArchivedSummary): void {
    const entry = this.entries.get(sessionId)
    if (entry !== undefined && entry.files.at(-1) === file) this.summarize(entry, summary)
  }

  /** Forgets one file; the next older one (if any) becomes the session, its summary unknown. */
  remove (sessionId: string, name: string): void {
    this.removeWhere(sessionId, (file) => file.name === name)
  }

  /** `remove` for that very entry (from newest()): a later file of the same name stays. */
  forget (sessionId: string, file: ArchivedFile): void {
    this.removeWhere(sessionId, (indexed) => indexed === file)
  }

  private removeWhere (sessionId: string, which: (file: ArchivedFile) => boolean): void {
    const entry = this.entries.get(sessionId)
    const at = entry?.files.findIndex(which) ?? -1
    if (entry === undefined || at === -1) return
    const wasNewest = at === entry.files.length - 1
    const [file] = entry.files.splice(at, 1)
    this.totals.files--
    this.totals.bytes -= file?.bytes ?? 0
    if (entry.files.length === 0) {
      this.summarize(entry, null)
      this.entries.delete(sessionId)
      this.totals.sessions--
    } else if (wasNewest) {
      this.summarize(entry, null)
    }
  }

  /** Every archived session's id. */
  ids (): string[] {
    return [...this.entries.keys()]
  }

  /** Ids whose newest file has not been read yet. */
  unsummarized (): string[] {
    const ids: string[] = []
    for (const [id, entry] of this.entries) if (entry.summary === null) ids.push(id)
    return ids
  }

  /** The summaries known, in list order (listOrder: newest `updated_at` first; sorted again only after a change). */
  summaries (): readonly ArchivedSummary[] {
    if (this.sorted !== null) return this.sorted
    const keyed: Array<{ ms: number, summary: ArchivedSummary }> = []
    for (const entry of this.entries.values()) if (entry.summary !== null) keyed.push({ ms: Date.parse(entry.summary.updated_at), summary: entry.summary })
    keyed.sort((a, b) => listOrder(a.ms, a.summary.session_id, b.ms, b.summary.session_id))
    this.sorted = keyed.map(({ summary }) => summary)
    return this.sorted
  }

  stats (): Readonly<ArchiveTotals> {
    return this.totals
  }

  clear (): void {
    this.sorted = null
    this.entries.clear()
    Object.assign(this.totals, { sessions: 0, files: 0, bytes: 0 })
  }

  private summarize (entry: Entry, summary: ArchivedSummary | null): void {
    if (entry.summary === summary) return
    entry.summary = summary
    this.sorted = null
  }
}
