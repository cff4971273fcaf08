import type pg from 'pg'
import type { Config } from '../../schemas/config.js'
import type { SessionFile } from '../../schemas/session.js'
import { CommandFailedError, CorruptSessionFileError, KeyUnavailableError, SealNotOpenedError, SessionTooLargeError } from '../../services/errors.js'
import type { Keyring } from '../../services/store/keyring.js'
import { readSessionDocument, serializeSessionFile } from '../../services/store/session-files.js'
import { sessionBound } from '../../services/store/save-rules.js'
import { columnsHold, deriveColumns, keyChecksOf } from '../../services/store/postgres/sessions-sql.js'
import { rowName, resealRow, sealedPage, sealState, unsealedPage, type StoredRow, type UnsealedRow } from '../rows.js'
import type { KidProofs } from '../folder.js'

/** Rows read per round trip at most (and PAGE_BYTES of documents, past the first). */
const PAGE_ROWS = 200

export interface SealCounts {
  sealed: number
  /** Rows a server changed between our read and our write: its save sealed (or will seal) them. */
  changed: number
  unreadable: number
  /** After the run: copies sealed under the active key, and the others (plaintext or another key). */
  underKey: number
  other: number
}

/**
 * Seals every stored copy in the database under the active key, each row in its own statement
 * (autocommit): a run cut short has sealed some rows entirely and left the rest as they were,
 * and a rerun picks up the rest (unsealedPage). Safe beside running servers (see resealRow).
 */
export async function sealRows (client: pg.Client, settings: Config, keyring: Keyring, problems: Array<{ file: string, reason: string }>, proofs: KidProofs): Promise<SealCounts> {
  // The store's check was compared at its init (a differing key stopped there already).
  if ((await client.query(keyChecksOf([keyring.activeKid]))).rowCount === 0) await proveKey(client, keyring)
  const counts: SealCounts = { sealed: 0, changed: 0, unreadable: 0, underKey: 0, other: 0 }
  for (let after = '0'; ;) {
    const { rows } = await client.query<UnsealedRow>(unsealedPage(after, PAGE_ROWS, keyring.activeKid))
    for (const row of rows) {
      const sealed = await resealed(row, settings, keyring, problems, proofs)
      if (sealed === null) {
        counts.unreadable++
        continue
      }
      const columns = deriveColumns(sealed.file, keyring.activeKid)
      // Under the key already, its columns right (a session of no task): nothing to do.
      if (sealed.kept && columnsHold(row, columns)) continue
      const { rowCount } = await client.query(resealRow(row.row_id, row.version, sealed.data, columns))
      if (rowCount === 1) counts.sealed++
      else counts.changed++
    }
    const last = rows.at(-1)
    // Pages are bounded in bytes too (PAGE_BYTES): only an empty one is the end.
    if (last === undefined) break
    after = last.row_id
  }
  const state = (await client.query<{ under_key: number, other: number }>(sealState(keyring.activeKid))).rows[0]
  return { ...counts, underKey: state?.under_key ?? 0, other: state?.other ?? 0 }
}

/** The row's session sealed under the active key, or null (and a problem) when it cannot be. */
async function resealed (row: UnsealedRow, settings: Config, keyring: Keyring, problems: Array<{ file: string, reason: string }>, proofs: KidProofs): Promise<{ data: Buffer, file: SessionFile, kept: boolean } | null> {
  try {
    const { file, kid } = readSessionDocument(rowName(row), row.document, row.session_id, keyring)
    proofs.opens(kid)
    // The column disagreed with the document (written by hand, or imported without the key): the document is right.
    if (kid === keyring.activeKid) return { data: Buffer.from(row.document, 'utf8'), file, kept: true }
    // The server's bound, with the room its runs' records may use (a session may be stored in it).
    return { data: await serializeSessionFile(file, 2, sessionBound(file, settings.TASK_MAX_SESSION_BYTES, { records: true }), keyring, settings.TASK_MAX_SESSION_BYTES), file, kept: false }
  } catch (err) {
    if (err instanceof CorruptSessionFileError || err instanceof KeyUnavailableError) {
      if (err instanceof SealNotOpenedError) proofs.failsUnder(err.kid, row.archived)
      // The report names the row already.
      problems.push({ file: rowName(row), reason: err instanceof CorruptSessionFileError ? err.reason : err.message })
      return null
    }
    if (err instanceof SessionTooLargeError) {
      problems.push({ file: rowName(row), reason: `its content passes TASK_MAX_SESSION_BYTES (${err.maxBytes} bytes), so no server could save it sealed; left as it is` })
      return null
    }
    throw err
  }
}

/** `seal`'s stop when the copies under the active kid prove its key wrong: nothing was written. */
export function wrongSealingKey (kid: string, unopened: number, what: 'files' | 'rows'): CommandFailedError {
  return new CommandFailedError(`cannot seal: key '${kid}' opens none of the ${unopened} ${what} sealed under it; TASK_ENCRYPTION_KEYS holds a different key under that kid, ` +
    'and sealing under it would leave everything where the right key cannot open it. Put the right key back; nothing was written')
}

/** As the folder's proveKey (seal.ts): rows under the active kid are read until one opens. */
async function proveKey (client: pg.Client, keyring: Keyring): Promise<void> {
  let unopened = 0
  for (let after = '0'; ;) {
    const { rows } = await client.query<StoredRow>(sealedPage(after, PAGE_ROWS, keyring.activeKid))
    for (const row of rows) {
      try {
        readSessionDocument(rowName(row), row.document, row.session_id, keyring)
        return
      } catch (err) {
        // A copy damaged otherwise says nothing of the key.
        if (err instanceof SealNotOpenedError) unopened++
        else if (!(err instanceof CorruptSessionFileError)) throw err
      }
    }
    const last = rows.at(-1)
    // Pages are bounded in bytes too (PAGE_BYTES): only an empty one is the end.
    if (last === undefined) break
    after = last.row_id
  }
  if (unopened > 0) throw wrongSealingKey(keyring.activeKid, unopened, 'rows')
}
