import { isDeepStrictEqual } from 'node:util'
import type { Static } from '@sinclair/typebox'
import type { SessionSummary as SessionSummarySchema } from '../../schemas/api.js'
import { SessionLeavingError, SessionNotFoundError, SessionTooLargeError, ShuttingDownError, StorageError, UnsavedChangesLostError, VersionConflictError, type LostChanges } from '../errors.js'
import { Draft, Unchanged, unchanged, type ChangeFn } from './draft.js'
import { cloneSessionFile, currentIndex, isoNow, listOrder, progressOf, type Progress, type SessionFile } from './session.js'
import type { SessionStore } from '../store/store.js'
import type { SessionCounts } from '../types.js'

/** A change applied to a draft: its result, and whether it changed nothing. */
interface Applied {
  change: QueuedChange
  value: unknown
  unchanged: boolean
}

interface QueuedChange {
  apply: ChangeFn<unknown>
  resolve: (value: unknown) => void
  reject: (error: unknown) => void
  /** Wants the session checked against the stored one first (a shared store; see sync). */
  fresh: boolean
  /** Only that: nothing to apply (sync), so no draft is made for it. */
  syncOnly: boolean
  /** Only records how a run goes: see ChangeOptions.records. */
  records: boolean
  /** Lands only while no other replica holds the session's lease: see ChangeOptions.leaseFree. */
  leaseFree: boolean
  /** Times it met a version conflict and was applied again to the stored state. */
  conflicts: number
  /**
   * Written in a draft of its own: it shared a write that made the session too large, and only
   * the change that does it may fail for it (not an agent's result that happened to share it);
   * or it deletes or archives the session, or is leaseFree, which the store may refuse for reasons
   * of its own (another replica took the session's lease), not to be the fate of changes queued before it.
   */
  alone?: boolean
}

export interface SessionSlot {
  /** The durable state (with auto-save off: the committed state). null until first saved. */
  file: SessionFile | null
  progress: Progress | null
  updatedMs: number
  bytes: number
  executing: boolean
  /** Its archive or delete is being written: no execution may claim it meanwhile. */
  leaving: boolean
  /** Committed but not yet saved (auto-save off). */
  unsaved: boolean
  queue: QueuedChange[]
  flushing: Promise<void> | null
  /** A write met a version conflict: the stored session is read before the next change is applied. */
  stale: boolean
  /**
   * A write whose outcome was unknown failed, and so did putting the acknowledged state back
   * (writeBack): storage may hold a change answered as failed. The write-back it owes (its
   * intent) is tried again (retryWriteBacks) until it, or any later write of the session, lands.
   */
  owed: Draft['intent'] | null
  /** In the registry's list order (`ordered` or `joined`). */
  listed: boolean
}

/** An active session in a list: its ids, times and progress. */
export type SessionSummary = Static<typeof SessionSummarySchema>

/** The sessions held, newest updated first, read by position: only what a page shows is built. */
export interface NewestFirst {
  readonly length: number
  updatedMs(at: number): number
  sessionId(at: number): string
  summary(at: number): SessionSummary
}

export interface ChangeOptions {
  /** Check the session against the stored one first (a shared store; see sync). */
  fresh?: boolean
  /**
   * The change only records how a run goes (statuses, times, counters, a short error), adding
   * no client or agent content: its save may use the room past TASK_MAX_SESSION_BYTES kept for
   * that (SaveOptions.records), so a session at the bound still runs and fails its tasks.
   */
  records?: boolean
  /**
   * The change must not land while another replica holds the session's lease (SaveOptions.leaseFree):
   * its write is refused with SessionBusyError then, on a version conflict's reapply too.
   */
  leaseFree?: boolean
}

/** Times a change is applied again after version conflicts (another replica wrote in between) before it fails. */
const MAX_CONFLICTS = 5

/** The counts plus the stored size of the active sessions. */
export interface Totals extends SessionCounts {
  bytes: number
  files: number
}

export interface RegistryOptions {
  store: SessionStore
  autoSave: boolean
  clock: () => Date
  /**
   * A write-back failed (see SessionSlot.owed): someone is to call retryWriteBacks() later.
   * `retried`: it was one of retryWriteBacks()'s tries, not the first after a failed write.
   */
  writeBackFailed?: (sessionId: string, error: unknown, retried: boolean) => void
}

/**
 * Sessions in memory, and the only way to change them. Changes to one session are queued and
 * written in batches: while one write is in flight, every change that arrives waits for the
 * next write, which holds them all. A change's promise resolves once a write containing it is
 * durable; if that write fails, every change in it rejects and memory keeps the state before
 * them. Totals are kept current on every commit so stats never scan sessions.
 */
export class SessionRegistry {
  private readonly slots = new Map<string, SessionSlot>()
  /** Lower-cased id → id of every session held, on a caseless store (caseTwinOf); null on others. */
  private readonly folded: Map<string, string> | null
  /** The ids nextIdle has still to hand out this turn. */
  private turn: string[] = []
  /**
   * The slots holding a session, newest updated first, as last sorted; `joined` those given one
   * since. Sorted again only after a commit, from the last order: nearly in order, which costs the
   * sort a pass rather than a full sort, so a list of 100,000 sessions does not build them all.
   */
  private ordered: SessionSlot[] = []
  private joined: SessionSlot[] = []
  private orderStale = false
  /** Counts sessions given to or taken from this registry: what a copy of its membership is checked against. */
  private joinsAndLeaves = 0
  /** joinsAndLeaves when the order was last sorted: past as many changes as it holds, it is sorted anyway, so memory stays bounded without lists. */
  private sortedAt = 0
  /** Why saveUnsaved() last failed to write a session (see lostChanges). */
  private readonly saveFailures = new Map<string, unknown>()
  /** Sessions whose first write is in flight (see sessionsAndCreates). */
  private creating = 0
  private readonly store: SessionStore
  private readonly autoSave: boolean
  private readonly clock: () => Date
  private readonly writeBackFailed: (sessionId: string, error: unknown, retried: boolean) => void
  /** Shutdown's last drain is done (refuseChanges). */
  private refusing = false
  private readonly totals: Totals = {
    total_sessions: 0,
    active_sessions: 0,
    completed_sessions: 0,
    total_tasks: 0,
    completed_tasks: 0,
    failed_tasks: 0,
    pending_tasks: 0,
    in_progress_tasks: 0,
    bytes: 0,
    files: 0
  }

  constructor (options: RegistryOptions) {
    this.store = options.store
    this.autoSave = options.autoSave
    this.clock = options.clock
    this.writeBackFailed = options.writeBackFailed ?? (() => {})
    this.folded = options.store.caseless === true ? new Map() : null
  }

  /**
   * On a store whose ids differing only in case name one place (caseless): the session held
   * here whose id is `sessionId` in another case, else null.
   */
  caseTwinOf (sessionId: string): string | null {
    const twin = this.folded?.get(sessionId.toLowerCase())
    return twin === undefined || twin === sessionId ? null : twin
  }

  /** Adds a session read from storage (restore); it must not be known yet. */
  load (file: SessionFile, bytes: number): void {
    const slot = this.slotFor(file.session_id)
    this.commit(slot, file, bytes, true)
  }

  /** The slot of an existing session, or throws SessionNotFoundError. */
  existing (sessionId: string): SessionSlot & { file: SessionFile, progress: Progress } {
    const slot = this.slots.get(sessionId)
    if (slot?.file == null || slot.progress === null) throw new SessionNotFoundError(sessionId)
    return slot as SessionSlot & { file: SessionFile, progress: Progress }
  }

  /** The durable state of a session, or null if it does not exist. */
  find (sessionId: string): SessionFile | null {
    return this.slots.get(sessionId)?.file ?? null
  }

  /**
   * Resolves once every change queued for the session so far has settled, whatever came of
   * them: a read that finds nothing can then tell "gone" from "a change was still on its way".
   */
  async settle (sessionId: string): Promise<void> {
    await this.change(sessionId, () => unchanged(undefined)).catch(() => {})
  }

  /**
   * The session as its last completed write left it, taken in its change queue: never half of
   * a change. null when it does not exist (deleted or archived by then). With a shared store,
   * checked against the stored session first in the same turn (see sync): another replica's
   * last write, and sessions this replica never held.
   */
  async snapshot (sessionId: string): Promise<SessionFile | null> {
    // Committed files are never edited in place (changes edit a clone), so no copy is needed.
    return this.change(sessionId, () => unchanged(this.slots.get(sessionId)?.file ?? null), { fresh: this.store.shared !== undefined })
  }

  /** Sessions known, including ones whose first save is still under way. */
  get slotCount (): number {
    return this.slots.size
  }

  /**
   * Active sessions plus those whose first write (a create, a bring-back from the archive) is
   * under way, what TASK_MAX_SESSIONS bounds: a burst of creates cannot overshoot it, and work
   * on ids that hold no session (deleting an archived one, reading a missing one) takes no room.
   */
  get sessionsAndCreates (): number {
    return this.totals.total_sessions + this.creating
  }

  get size (): number {
    return this.totals.total_sessions
  }

  /** Changes whenever a session joins or leaves the registry (not when one changes). */
  get membership (): number {
    return this.joinsAndLeaves
  }

  /** Queues a change and resolves with its result once it is durable. */
  change<R> (sessionId: string, apply: ChangeFn<R>, options: ChangeOptions = {}): Promise<R> {
    return this.enqueue(sessionId, apply, options, false) as Promise<R>
  }

  /**
   * With a store shared by several replicas: brings this copy of the session up to the stored
   * one (another replica may have changed, created, archived or deleted it), in its change
   * queue, so that what is read next reflects every write acknowledged anywhere before. A
   * store of this process alone: nothing to do.
   */
  async sync (sessionId: string): Promise<void> {
    if (this.store.shared === undefined) return
    await this.enqueue(sessionId, () => unchanged(undefined), { fresh: true }, true)
  }

  /**
   * After the last drain at shutdown: changes from now on are refused (ShuttingDownError).
   * Nothing would publish their events, and the storage is about to close.
   */
  refuseChanges (): void {
    this.refusing = true
  }

  private enqueue (sessionId: string, apply: ChangeFn<unknown>, options: ChangeOptions, syncOnly: boolean): Promise<unknown> {
    if (this.refusing) return Promise.reject(new ShuttingDownError())
    const slot = this.slotFor(sessionId)
    return new Promise((resolve, reject) => {
      const leaseFree = options.leaseFree === true
      slot.queue.push({ apply, resolve, reject, fresh: options.fresh === true, records: options.records === true, leaseFree, syncOnly, conflicts: 0, ...(leaseFree && { alone: true }) })
      slot.flushing ??= this.flush(sessionId, slot)
    })
  }

  /**
   * Marks a session as executing; false if it already was. SessionLeavingError while its archive
   * or delete is being written: claimed then, it would run a session that is gone a moment later.
   */
  claim (sessionId: string): boolean {
    const slot = this.existing(sessionId)
    if (slot.leaving) throw new SessionLeavingError(sessionId)
    if (slot.executing) return false
    slot.executing = true
    return true
  }

  release (sessionId: string): void {
    const slot = this.slots.get(sessionId)
    if (slot === undefined) return
    slot.executing = false
    this.forgetIfGone(sessionId, slot)
  }

  /** The sessions held, newest updated first (see NewestFirst). */
  newestFirst (): NewestFirst {
    const ordered = this.order()
    return {
      length: ordered.length,
      updatedMs: (at) => (ordered[at] as SessionSlot).updatedMs,
      sessionId: (at) => ((ordered[at] as SessionSlot).file as SessionFile).session_id,
      summary: (at) => {
        const slot = ordered[at] as SessionSlot
        const file = slot.file as SessionFile
        return { session_id: file.session_id, created_at: file.created_at, updated_at: file.updated_at, ...(slot.progress as Progress) }
      }
    }
  }

  /** A page of the sessions held, newest updated first. */
  summaries (offset = 0, limit = Number.MAX_SAFE_INTEGER): SessionSummary[] {
    const all = this.newestFirst()
    const page: SessionSummary[] = []
    for (let at = offset; at < Math.min(all.length, offset + limit); at++) page.push(all.summary(at))
    return page
  }

  private order (): SessionSlot[] {
    if (!this.orderStale) return this.ordered
    const next: SessionSlot[] = []
    for (const slot of this.ordered) {
      if (slot.file !== null) next.push(slot)
      else slot.listed = false
    }
    for (const slot of this.joined) {
      if (slot.file !== null) next.push(slot)
      else slot.listed = false
    }
    next.sort((a, b) => listOrder(a.updatedMs, (a.file as SessionFile).session_id, b.updatedMs, (b.file as SessionFile).session_id))
    this.ordered = next
    this.joined = []
    this.orderStale = false
    this.sortedAt = this.joinsAndLeaves
    return next
  }

  /**
   * The next `count` sessions held here and idle (no run, nothing queued or unsaved), in turn
   * over every call: what a replica checks against the shared store now and then.
   */
  nextIdle (count: number): string[] {
    const ids: string[] = []
    for (let seen = 0; ids.length < count && seen < this.slots.size; seen++) {
      if (this.turn.length === 0) {
        this.turn = [...this.slots.keys()]
        if (this.turn.length === 0) break
      }
      const id = this.turn.pop() as string
      const slot = this.slots.get(id)
      // One owing a write-back is not checked: reading the stored state would adopt the change it is to undo.
      if (slot !== undefined && slot.file !== null && !slot.executing && !slot.unsaved && slot.owed === null && slot.flushing === null && slot.queue.length === 0) ids.push(id)
    }
    return ids
  }

  sessionIds (): string[] {
    return [...this.slots.entries()].filter(([, slot]) => slot.file !== null).map(([id]) => id)
  }

  /**
   * The active sessions and those with a change queued or being written: a session being
   * brought back from the archive is in neither the archive's index nor the active ones until
   * its write ends, so a pass over every session (a backup) looks for it here too.
   */
  sessionIdsWithChanges (): string[] {
    return [...this.slots.entries()].filter(([, slot]) => slot.file !== null || slot.flushing !== null || slot.queue.length > 0).map(([id]) => id)
  }

  /** The live totals; callers copy what they keep. */
  stats (): Readonly<Totals> {
    return this.totals
  }

  /** Resolves once every queued change has been written or has failed. */
  async drain (): Promise<void> {
    for (;;) {
      const pending = [...this.slots.values()].map((slot) => slot.flushing).filter((p) => p !== null)
      if (pending.length === 0) return
      await Promise.all(pending)
    }
  }

  /**
   * Writes every session committed while auto-save was off, through each session's queue. Each
   * is written whatever becomes of the others; then, if any could not be, UnsavedChangesLostError
   * names every one of them with its cause.
   */
  async saveUnsaved (): Promise<void> {
    const saves: Array<Promise<unknown>> = []
    const failed: LostChanges[] = []
    for (const [sessionId, slot] of this.slots) {
      if (!slot.unsaved) continue
      saves.push(this.change(sessionId, (draft) => {
        if (draft.file === null) return unchanged(undefined)
        draft.forceSave()
      }).then(() => { this.saveFailures.delete(sessionId) }, (cause: unknown) => {
        this.saveFailures.set(sessionId, cause)
        failed.push({ sessionId, cause })
      }))
    }
    await Promise.all(saves)
    if (failed.length > 0) throw new UnsavedChangesLostError(failed)
  }

  /**
   * Sessions holding changes that are not written (auto-save off), with why the last
   * saveUnsaved() could not write them (undefined if it did not try): after a shutdown, the
   * changes it lost. Kept here, not only in the error, so that a later failure of the shutdown
   * (releasing the storage lock) cannot hide them.
   */
  lostChanges (): LostChanges[] {
    const lost: LostChanges[] = []
    for (const [sessionId, slot] of this.slots) if (slot.unsaved) lost.push({ sessionId, cause: this.saveFailures.get(sessionId) })
    return lost
  }

  /** Committed in memory but not yet saved (auto-save off). */
  isUnsaved (sessionId: string): boolean {
    return this.slots.get(sessionId)?.unsaved === true
  }

  private slotFor (sessionId: string): SessionSlot {
    let slot = this.slots.get(sessionId)
    if (slot === undefined) {
      slot = { file: null, progress: null, updatedMs: 0, bytes: 0, executing: false, leaving: false, unsaved: false, queue: [], flushing: null, stale: false, owed: null, listed: false }
      this.slots.set(sessionId, slot)
    }
    return slot
  }

  private async flush (sessionId: string, slot: SessionSlot): Promise<void> {
    // Yield once so that `flushing` is set before any work, and changes queued in the
    // same tick share the first write.
    await Promise.resolve()
    while (slot.queue.length > 0) {
      // A bring-back in doubt is undone first (on a shared store it changes what is stored).
      if (slot.owed?.kind === 'unarchive' && this.store.shared !== undefined) {
        try {
          await this.undoBringBack(sessionId, slot, slot.owed)
        } catch (err) {
          for (const change of slot.queue.splice(0)) change.reject(err)
          break
        }
      }
      // Owing a write-back, this copy is the acknowledged state and the stored one may hold the
      // change to undo: reads are served from here until it lands (a conflict still reloads).
      if (slot.stale || (slot.owed === null && slot.queue.some((change) => change.fresh))) {
        try {
          await this.reload(sessionId, slot)
        } catch (err) {
          // The stored session could not be read: nothing queued can be applied to a known state.
          for (const change of slot.queue.splice(0)) change.reject(err)
          break
        }
        // Reads waiting for the stored state have it now; no draft is made for them.
        if (slot.queue.every((change) => change.syncOnly)) {
          for (const change of slot.queue.splice(0)) change.resolve(undefined)
          continue
        }
      }
      const { draft, applied } = this.applyBatch(sessionId, slot)
      let requeued = false
      if (applied.some((outcome) => !outcome.unchanged)) {
        slot.leaving = draft.intent.kind === 'archive' || draft.intent.kind === 'delete'
        try {
          requeued = await this.write(sessionId, slot, draft, applied)
        } finally {
          slot.leaving = false
        }
      }
      // Changes that changed nothing settle after the write before them, so a settle() or
      // snapshot() queued behind a change never resolves before that change is durable (when
      // the batch is applied again, they wait for that).
      if (!requeued) for (const { change, value, unchanged } of applied) if (unchanged) change.resolve(value)
    }
    slot.flushing = null
    this.forgetIfGone(sessionId, slot)
  }

  /**
   * Applies queued changes to one draft, up to a delete or archive, which is written on its own:
   * what follows starts from its result, and what came before is written first (a change found
   * to delete or archive behind others puts the batch back, and the others are applied again).
   */
  private applyBatch (sessionId: string, slot: SessionSlot): { draft: Draft, applied: Applied[] } {
    const batch = slot.queue.splice(0)
    const draft = new Draft(sessionId, slot.file && cloneSessionFile(slot.file), this.clock(), slot.file)
    const applied: Applied[] = []
    while (batch.length > 0) {
      const change = batch.shift() as QueuedChange
      if (change.alone === true && applied.length > 0) {
        slot.queue.unshift(change, ...batch)
        break
      }
      try {
        const value = change.apply(draft)
        if ((draft.intent.kind === 'archive' || draft.intent.kind === 'delete') && applied.length > 0) {
          change.alone = true
          slot.queue.unshift(...applied.map((outcome) => outcome.change), change, ...batch)
          return this.applyBatch(sessionId, slot)
        }
        applied.push(value instanceof Unchanged ? { change, value: value.value, unchanged: true } : { change, value, unchanged: false })
      } catch (err) {
        change.reject(err)
      }
      if (draft.intent.kind === 'archive' || draft.intent.kind === 'delete' || change.alone === true) {
        slot.queue.unshift(...batch)
        break
      }
    }
    return { draft, applied }
  }

  /** Writes a draft and settles the changes in it: resolved once durable, rejected (memory as before) if not. */
  /** Resolves true when the batch went back into the queue, to be applied again to the stored state. */
  private async write (sessionId: string, slot: SessionSlot, draft: Draft, applied: Applied[]): Promise<boolean> {
    // The shutdown's save of what auto-save off kept in memory changes nothing: the time stays that of the last change.
    if (draft.file !== null && !(draft.intent.kind === 'save' && draft.intent.force && isDeepStrictEqual(draft.file, slot.file))) {
      draft.file.updated_at = isoNow(draft.now)
      draft.file.session.current_index = currentIndex(draft.file.session.tasks)
    }
    let bytes: number
    const changed = applied.filter((outcome) => !outcome.unchanged).map((outcome) => outcome.change)
    // Counted from the change that made it (this turn) until it is a session or has failed.
    const creates = slot.file === null && draft.file !== null
    if (creates) this.creating++
    try {
      bytes = await this.persist(sessionId, slot, draft, { records: changed.every((change) => change.records), leaseFree: changed.some((change) => change.leaseFree) })
    } catch (err) {
      if (creates) this.creating--
      // Still owing an archive's undo, the write failed in that undo (persist): that is what to put back.
      if (err instanceof StorageError && err.uncertain) await this.writeBack(sessionId, slot, slot.owed?.kind === 'archive' ? slot.owed : draft.intent)
      if (err instanceof VersionConflictError && this.store.shared !== undefined && changed.every((change) => change.conflicts < MAX_CONFLICTS)) {
        // Another replica wrote the session since this copy was read: the changes are applied
        // again, in order and ahead of later ones, to the stored state.
        for (const change of changed) change.conflicts++
        slot.queue.unshift(...applied.map((outcome) => outcome.change))
        slot.stale = true
        return true
      }
      if (err instanceof SessionTooLargeError && changed.length > 1) {
        // Together they are too large: each is written alone, so that only the one(s) that make
        // the session too large fail, and each with its own error.
        for (const { change } of applied) change.alone = true
        slot.queue.unshift(...applied.map((outcome) => outcome.change))
        return true
      }
      for (const change of changed) change.reject(err)
      return false
    }
    if (creates) this.creating--
    this.commit(slot, draft.file, bytes, this.autoSave || draft.intent.kind !== 'save' || draft.intent.force)
    for (const { change, value, unchanged } of applied) if (!unchanged) change.resolve(value)
    return false
  }

  private async persist (sessionId: string, slot: SessionSlot, draft: Draft, { records, leaseFree }: { records: boolean, leaseFree: boolean }): Promise<number> {
    // Also with auto-save off: memory must not hold changes that can never be saved.
    const refusal = this.store.unwritable?.() ?? null
    if (refusal !== null) throw refusal
    const intent = draft.intent
    // An archive in doubt may have left an archived copy beside the active one (a later save
    // would leave it behind): a delete removes it with the rest, needing no room on a full disk;
    // any other write undoes the archive first, to start from one stored session.
    if (slot.owed?.kind === 'archive' && slot.file !== null) {
      // Owed until the delete is done: if it fails after this, the undo puts the session back.
      if (intent.kind === 'delete') await this.store.removeArchived(sessionId)
      else {
        await this.store.undoArchive(slot.file, { records: true, stored: slot.bytes })
        slot.owed = null
      }
    }
    switch (intent.kind) {
      case 'delete': {
        // Archived copies go first: if that fails, the active session is still intact.
        const removed = intent.archived ? await this.store.removeArchived(sessionId, intent.upTo) : 0
        // Owing a write-back, an active copy may be stored though none is acknowledged (a
        // bring-back or create answered as failed): it goes too.
        if (slot.file !== null || slot.owed !== null) await this.store.remove(sessionId)
        // Nothing deleted: another replica brought the archived session back (or deleted it)
        // since it was read here. The delete is decided again on what the rows hold now.
        if (slot.file === null && removed === 0 && this.store.shared !== undefined) throw new VersionConflictError(sessionId, `deleting session '${sessionId}'`)
        break
      }
      case 'archive':
        if (slot.file === null) break
        // An archive moves the stored copy: one owing a write-back may hold a change answered as failed.
        if (slot.owed !== null) {
          await this.putBack(slot.file, slot.owed, slot.bytes)
          slot.owed = null
        }
        await this.store.archive(slot.file, { records: true, stored: slot.bytes })
        break
      case 'unarchive': {
        // Written even with auto-save off: the archived copy is removed right after.
        const bytes = await this.store.unarchive(draft.file as SessionFile, intent.from, { records, stored: intent.bytes })
        slot.owed = null
        return bytes
      }
      case 'save': {
        if (draft.file === null) return 0
        if (!this.autoSave && !intent.force) return slot.bytes
        const bytes = await this.store.save(draft.file, { records, stored: slot.bytes, leaseFree })
        slot.owed = null
        return bytes
      }
    }
    // The active copy was removed: whatever a failed write left there is gone.
    if (intent.kind === 'delete') slot.owed = null
    return 0
  }

  /** Replaces this copy with the stored session when they differ (a shared store's refresh). */
  private async reload (sessionId: string, slot: SessionSlot): Promise<void> {
    const stored = await this.store.shared?.refresh(sessionId)
    slot.stale = false
    // This copy is the stored state now: there is nothing left to put back.
    if (this.store.shared !== undefined) slot.owed = null
    if (stored === undefined) return
    this.commit(slot, stored?.file ?? null, stored?.bytes ?? 0, true)
  }

  /**
   * After a write whose outcome is uncertain, puts the last acknowledged state back so that
   * a failed request leaves no trace, on disk or after a restart. If this fails too, the
   * session owes it (SessionSlot.owed): retryWriteBacks() tries again, and any later write of
   * the session that lands settles it.
   */
  private async writeBack (sessionId: string, slot: SessionSlot, intent: Draft['intent'], retried = false): Promise<void> {
    try {
      if (intent.kind === 'unarchive' && this.store.shared !== undefined) await this.undoBringBack(sessionId, slot, intent)
      else if (slot.file === null) await this.store.remove(sessionId)
      // It was acknowledged, so it fits; it may have used the records room. With auto-save off
      // it may hold changes not saved yet: written too, since an uncertain delete may have
      // removed the file, and a crash then would lose the whole session, not just those changes.
      // An archive may have made an archived copy too: the undo removes it.
      else this.commit(slot, slot.file, await this.putBack(slot.file, intent, slot.bytes), true)
      slot.owed = null
    } catch (err) {
      // Another replica wrote the session since (or the row is in no state our writes left):
      // storage holds an acknowledged state, adopted here.
      if (err instanceof VersionConflictError && this.store.shared !== undefined && await this.reload(sessionId, slot).then(() => true, () => false)) return
      slot.owed = intent
      this.writeBackFailed(sessionId, err, retried)
    }
  }

  /**
   * A shared store brings an archived session back in one statement, which removes the archived
   * copy: removing the active row that may have landed would lose the session. The store
   * archives it again instead (undoUnarchive), and this copy then follows what is stored.
   */
  private async undoBringBack (sessionId: string, slot: SessionSlot, intent: Extract<Draft['intent'], { kind: 'unarchive' }>): Promise<void> {
    await this.store.shared?.undoUnarchive(intent.archived, intent.from)
    await this.reload(sessionId, slot)
  }

  /** Writes the acknowledged state back after a write of `intent` whose outcome is unknown. */
  private async putBack (file: SessionFile, intent: Draft['intent'], stored: number): Promise<number> {
    return intent.kind === 'archive' ? await this.store.undoArchive(file, { records: true, stored }) : await this.store.save(file, { records: true, stored })
  }

  /**
   * Tries again every write-back owed (see SessionSlot.owed) of a session with nothing queued
   * or being written (one being written settles it, or fails and owes it again), each in its
   * change queue's turn. Resolves with how many are still owed; never rejects.
   */
  async retryWriteBacks (): Promise<number> {
    const tries: Array<Promise<void>> = []
    for (const [sessionId, slot] of this.slots) {
      const intent = slot.owed
      if (intent === null || slot.flushing !== null) continue
      const retry = (async () => {
        await this.writeBack(sessionId, slot, intent, true)
        // Changes queued meanwhile waited for this turn: their write starts now.
        slot.flushing = slot.queue.length > 0 ? this.flush(sessionId, slot) : null
        this.forgetIfGone(sessionId, slot)
      })()
      slot.flushing = retry
      tries.push(retry)
    }
    await Promise.all(tries)
    let owed = 0
    for (const slot of this.slots.values()) if (slot.owed !== null) owed++
    return owed
  }

  private commit (slot: SessionSlot, file: SessionFile | null, bytes: number, saved: boolean): void {
    if ((slot.file === null) !== (file === null)) {
      this.joinsAndLeaves++
      const id = (file ?? slot.file as SessionFile).session_id
      if (file !== null) this.folded?.set(id.toLowerCase(), id)
      else if (this.folded?.get(id.toLowerCase()) === id) this.folded.delete(id.toLowerCase())
    }
    this.count(slot, -1)
    slot.file = file
    slot.progress = file && progressOf(file.session.tasks)
    slot.updatedMs = file ? Date.parse(file.updated_at) : 0
    slot.bytes = file ? bytes : 0
    slot.unsaved = file !== null && !saved
    this.count(slot, 1)
    this.orderStale = true
    if (file !== null && !slot.listed) {
      slot.listed = true
      this.joined.push(slot)
    }
    if (this.joinsAndLeaves - this.sortedAt > Math.max(1024, this.ordered.length)) this.order()
  }

  private count (slot: SessionSlot, sign: 1 | -1): void {
    const progress = slot.progress
    if (slot.file === null || progress === null) return
    const t = this.totals
    t.total_sessions += sign
    if (progress.all_done) t.completed_sessions += sign
    else t.active_sessions += sign
    t.total_tasks += sign * progress.total
    t.completed_tasks += sign * progress.completed
    t.failed_tasks += sign * progress.failed
    t.pending_tasks += sign * progress.pending
    t.in_progress_tasks += sign * progress.in_progress
    t.bytes += sign * slot.bytes
    t.files += sign
  }

  private forgetIfGone (sessionId: string, slot: SessionSlot): void {
    if (slot.file === null && !slot.executing && slot.flushing === null && slot.queue.length === 0 && slot.owed === null) this.slots.delete(sessionId)
  }
}
