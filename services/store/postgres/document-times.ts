import type pg from 'pg'

/**
 * An archived copy's `created_at` and `updated_at` as its document holds them, which lists and
 * the archive index show (as the file store does), without asking the database to parse the
 * document: `document->>` parses the whole text (a second per 60,000 rows), and fails on what
 * the `json` type stores but cannot turn into text (`\u0000`, a lone surrogate: any instruction
 * or result may hold one). The first bytes give them for every document taskvault writes; any
 * other is read whole and parsed here.
 */

/** How much of a document `documentHead` reads: enough for an id of 128 characters and two ISO times at an indent of 2. */
const HEAD_CHARS = 256

/** The SQL of a document's first bytes (`column`: the document column, qualified as the statement needs). */
export function documentHead (column: string): string {
  return `left(${column}::text, ${HEAD_CHARS})`
}

export interface WrittenTimes {
  created_at: string
  updated_at: string
}

const HEAD_TIMES = /^\{\s*"session_id"\s*:\s*"[A-Za-z0-9_-]+"\s*,\s*"created_at"\s*:\s*"([^"\\]*)"\s*,\s*"updated_at"\s*:\s*"([^"\\]*)"/u

/**
 * The times from a document's first bytes, when they are its first keys after the id, as every
 * document taskvault writes has them (plain or sealed, any indent), free of escapes, and the
 * instants the row's columns hold (the whole document's: a key given twice counts by its last);
 * null otherwise (the whole document is read for them).
 */
export function headTimes (head: string | null, createdAt: Date | string, updatedAt: Date | string): WrittenTimes | null {
  const found = head === null ? null : HEAD_TIMES.exec(head)
  if (found === null) return null
  const times = { created_at: found[1] as string, updated_at: found[2] as string }
  const same = Date.parse(times.created_at) === new Date(createdAt).getTime() && Date.parse(times.updated_at) === new Date(updatedAt).getTime()
  return same ? times : null
}

/** The whole documents of these archived copies, as stored. */
export function archivedDocuments (rowIds: string[]): pg.QueryConfig {
  return { text: 'SELECT row_id, document::text AS document FROM sessions WHERE row_id = ANY($1::bigint[]) AND archived_at IS NOT NULL', values: [rowIds] }
}

/** The times a whole document holds at its top (clear in a sealed envelope too), each that it holds as text. */
export function wholeTimes (document: string): Partial<WrittenTimes> {
  let parsed: unknown
  try {
    parsed = JSON.parse(document)
  } catch {
    return {}
  }
  const { created_at: created, updated_at: updated } = (typeof parsed === 'object' && parsed !== null ? parsed : {}) as Record<string, unknown>
  return { ...(typeof created === 'string' && { created_at: created }), ...(typeof updated === 'string' && { updated_at: updated }) }
}
