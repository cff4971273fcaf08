/** The PostgreSQL store's proof that the configured keys are the ones its rows were sealed under (key-checks.ts). */
import type pg from 'pg'
import type { Keyring } from '../keyring.js'
import { kidRecord } from '../keyring.js'
import { checkedKids, provenKeyChecks, type KidProof } from '../key-checks.js'
import { readSessionDocument } from '../session-files.js'
import { SealNotOpenedError } from '../../errors.js'
import { archivedUnderKid } from './archive-sql.js'
import { addKeyChecks, keyChecksOf } from './sessions-sql.js'
import { archivedLikeName, type Run } from './row-summaries.js'

export interface KeyProofsOptions {
  keyring: Keyring
  run: Run
  /** Rows read at once at most (TASK_DATABASE_PAGE_ROWS). */
  pageRows: number
  /** Whether the key checks of kids the restore proved are added (a server's are; a tool given a key at a shell never pins it). */
  keep: boolean
  /** The database and schema, for errors. */
  location: string
}

/** A page of archived rows under one kid. */
interface StoredRow {
  row_id: string
  session_id: string
  document: string
}

/**
 * Which kids are proven (a row opened under them, or their key check matched) and which key
 * checks the database has none for yet. A key other than the one a kid was first given stops
 * the boot, sessions or not.
 */
export class KeyProofs {
  /** Kids under which a row opened (or whose key check matched): an archived row under one that does not open is damaged, not the key wrong. */
  readonly proven = new Set<string>()
  /** Key checks of configured kids the database has none for yet (written after the restore). */
  private unkept: Record<string, string> = {}

  constructor (private readonly options: KeyProofsOptions) {}

  /** Compares every configured kid with its stored key check (at init). */
  async verify (): Promise<void> {
    const { keyring, location } = this.options
    this.unkept = keyring.verifyChecks(await this.stored(keyring.kids), location)
    for (const kid of checkedKids(keyring, this.unkept)) this.proven.add(kid)
  }

  /**
   * The key checks the restore proved (provenKeyChecks) are added, when kept, and every
   * configured kid compared again: a replica that added a check first, with another key, wins,
   * and this one stops.
   */
  async settle (): Promise<void> {
    const { keyring, run, keep, location } = this.options
    const checks = await provenKeyChecks({
      keyring,
      unkept: this.unkept,
      proven: (kid) => this.proven.has(kid),
      archivedProof: async (kid) => this.archivedProof(kid),
      what: 'rows'
    })
    if (!keep || Object.keys(checks).length === 0) return
    await run('keeping the encryption key checks', addKeyChecks(checks))
    this.unkept = keyring.verifyChecks(await this.stored(keyring.kids), location)
  }

  /** What the archived rows say of the key under `kid` (KidProof), read a page at a time until one under it opens. */
  async archivedProof (kid: string): Promise<KidProof> {
    const { keyring, run, pageRows } = this.options
    let before: string | null = null
    let unopened = false
    for (;;) {
      const page: pg.QueryResult<StoredRow> = await run<StoredRow>('restoring sessions', archivedUnderKid(kid, before, pageRows))
      const rows = page.rows
      for (const row of rows) {
        try {
          if (readSessionDocument(archivedLikeName(row.session_id, row.row_id), row.document, row.session_id, keyring).kid === kid) return 'opened'
        } catch (err) {
          // Damaged, or not what it says: the next one may prove the key.
          unopened ||= err instanceof SealNotOpenedError
        }
      }
      if (rows.length < pageRows) return unopened ? 'unopened' : 'none'
      before = rows[rows.length - 1]?.row_id ?? null
    }
  }

  private async stored (kids: string[]): Promise<Record<string, string>> {
    const { rows } = await this.options.run<{ kid: string, key_check: string }>('reading the encryption key checks', keyChecksOf(kids))
    return kidRecord(rows.map((row) => [row.kid, row.key_check]))
  }
}
