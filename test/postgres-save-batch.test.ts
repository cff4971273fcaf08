/**
 * Group commit in the PostgreSQL store (save-batcher.ts): saves that queue while every
 * connection is busy are written together, one statement and one commit, and each still has
 * the fate of its own: its row exactly as serialized, its own conflict, its own error.
 * Transactions are counted by the rows' xmin (the id of the transaction that wrote them).
 */
import pg from 'pg'
import t, { type Test } from 'tap'
import type { SessionFile } from '../schemas/session.js'
import { StorageError } from '../services/errors.js'
import { PostgresSessionStore } from '../services/store/postgres/postgres-store.js'
import { serializeSessionFile } from '../services/store/session-files.js'
import { inspector as inspectorOf, openTestStore, testDatabase, throughProxy, type TestStoreOptions } from './postgres.js'
import { contractSession } from './store-contract.js'

const SCHEMA = 'tv_batch'

const openStore = async (t: Test, url: string, options: TestStoreOptions = {}): Promise<PostgresSessionStore> => openTestStore(t, url, SCHEMA, { max: 2, ...options })
const inspector = (t: Test, url: string): pg.Pool => inspectorOf(t, url, SCHEMA)

const text = async (file: SessionFile): Promise<string> => (await serializeSessionFile(file, 2, Number.POSITIVE_INFINITY)).toString('utf8')

/** The active documents by session id. */
async function documents (db: pg.Pool): Promise<Map<string, string>> {
  const { rows } = await db.query<{ session_id: string, document: string }>('SELECT session_id, document::text AS document FROM sessions WHERE archived_at IS NULL')
  return new Map(rows.map((row) => [row.session_id, row.document]))
}

/** How many transactions wrote the active rows of these sessions. */
async function transactions (db: pg.Pool, ids: string[]): Promise<number> {
  const { rows } = await db.query<{ n: number }>('SELECT count(DISTINCT xmin::text)::int AS n FROM sessions WHERE archived_at IS NULL AND session_id = ANY($1)', [ids])
  return rows[0]?.n ?? -1
}

/** A session whose text an array literal must escape: quotes, backslashes, braces, commas, NULL, unicode, newlines. */
function awkward (id: string, round: number): SessionFile {
  const file = contractSession(id, ['Completed', 'Pending'], `2024-0${round}-01T00:00:00.000Z`)
  const first = file.session.tasks[0]
  if (first !== undefined) first.instruction = `Round ${round}: "quoted" \\ back\\slash {braces}, NULL, commas ünïcödé 😀 \u2028\nline\ttab`
  return file
}

t.test('saves that queue while every connection is busy commit together, each row exactly as serialized', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const db = inspector(t, url)
  const store = await openStore(t, url, { max: 2 })
  const known = Array.from({ length: 100 }, (_, i) => awkward(`known-${i}`, 1))
  for (const file of known) await store.save(file)

  const updates = known.map((file) => awkward(file.session_id, 2))
  const created = Array.from({ length: 100 }, (_, i) => awkward(`new-${i}`, 3))
  const all = [...updates, ...created]
  const sizes = await Promise.all(all.map(async (file) => store.save(file)))
  const stored = await documents(db)
  for (const [i, file] of all.entries()) {
    const expected = await text(file)
    if (stored.get(file.session_id) !== expected) t.fail(`${file.session_id} is stored as serialized`)
    if (sizes[i] !== Buffer.byteLength(expected)) t.fail(`${file.session_id}'s save resolves with its stored size`)
  }
  t.equal(stored.size, 200, 'every session, once')
  const ids = all.map((file) => file.session_id)
  const commits = await transactions(db, ids)
  t.ok(commits <= 12, `200 concurrent saves on 2 connections committed in ${commits} transactions`)

  const again = await openStore(t, url)
  const loaded = await again.loadAll({ concurrency: 1 })
  t.strictSame(new Map(loaded.sessions.map((session) => [session.file.session_id, session.file])), new Map(all.map((file) => [file.session_id, file])), 'a restart reads every one back')
  await Promise.all(loaded.sessions.map(async (session) => again.save(session.file)))
  t.pass('the versions the batch wrote are the ones a later store reads and writes on')
})

t.test('in a batch, a conflict fails only its own session (409); the others commit', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const db = inspector(t, url)
  const store = await openStore(t, url, { max: 1 })
  const files = Array.from({ length: 30 }, (_, i) => contractSession(`c-${i}`, ['Pending']))
  for (const file of files) await store.save(file)
  // Another writer moves one row on behind this store's back.
  await db.query("UPDATE sessions SET version = version + 1 WHERE session_id = 'c-17' AND archived_at IS NULL")
  const before = (await documents(db)).get('c-17')

  const next = files.map((file) => contractSession(file.session_id, ['Completed'], '2024-05-01T00:00:00.000Z'))
  const outcomes = await Promise.allSettled(next.map(async (file) => store.save(file)))
  const failed = outcomes.flatMap((outcome, i) => outcome.status === 'rejected' ? [{ id: next[i]?.session_id, reason: outcome.reason as unknown }] : [])
  t.equal(failed.length, 1, 'one save failed')
  t.match(failed[0], { id: 'c-17', reason: { code: 'VERSION_CONFLICT', message: /c-17/u } })
  const stored = await documents(db)
  t.equal(stored.get('c-17'), before, 'the conflicting row is left as the other writer had it')
  for (const file of next) if (file.session_id !== 'c-17' && stored.get(file.session_id) !== await text(file)) t.fail(`${file.session_id} committed`)
  t.ok(await transactions(db, next.map((file) => file.session_id).filter((id) => id !== 'c-17')) < 29, 'and they were batched')
})

t.test('two saves of one session in flight at once are written in turn, the later one last', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const db = inspector(t, url)
  const store = await openStore(t, url, { max: 1 })
  const others = Array.from({ length: 10 }, (_, i) => contractSession(`o-${i}`))
  const versions = [1, 2, 3, 4].map((n) => contractSession('same', ['Pending'], `2024-0${n}-01T00:00:00.000Z`))
  await Promise.all([...others, ...versions].map(async (file) => store.save(file)))
  t.equal((await documents(db)).get('same'), await text(versions[3] as SessionFile), 'no conflict with itself, and the last save is the row')
})

t.test('a server error in a batch fails only the session at fault: the others are written again alone and commit', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const db = inspector(t, url)
  const store = await openStore(t, url, { max: 1, statementTimeoutMs: 300 })
  const files = Array.from({ length: 20 }, (_, i) => contractSession(`a-${i}`, ['Pending']))
  for (const file of files) await store.save(file)
  const before = await documents(db)
  // Only one row's update is slow, and it gets the whole batched statement cancelled.
  await db.query('CREATE FUNCTION slow_write() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN IF NEW.session_id = \'a-12\' THEN PERFORM pg_sleep(2); END IF; RETURN NEW; END $$')
  await db.query('CREATE TRIGGER slow BEFORE UPDATE ON sessions FOR EACH ROW EXECUTE FUNCTION slow_write()')
  const next = files.map((file) => contractSession(file.session_id, ['Completed'], '2024-06-01T00:00:00.000Z'))
  const outcomes = await Promise.allSettled(next.map(async (file) => store.save(file)))
  await db.query('DROP TRIGGER slow ON sessions')
  const rejected = outcomes.flatMap((outcome, i) => outcome.status === 'rejected' ? [{ id: next[i]?.session_id as string, reason: outcome.reason as StorageError }] : [])
  t.same(rejected.map((failure) => failure.id), ['a-12'], 'only the slow session fails')
  t.type(rejected[0]?.reason, StorageError)
  t.match(rejected[0]?.reason, { uncertain: false, message: /^saving session 'a-12' failed: storage is unavailable \(57014\)$/u }, 'cancelled: certainly not written')
  const after = await documents(db)
  t.equal(after.get('a-12'), before.get('a-12'), 'its row is as it was')
  for (const file of next) if (file.session_id !== 'a-12' && after.get(file.session_id) !== await text(file)) t.fail(`${file.session_id} committed`)
  t.ok(await transactions(db, next.map((file) => file.session_id).filter((id) => id !== 'a-12')) <= 19, 'the others committed')
  await store.save(next[12] as SessionFile)
  t.equal((await documents(db)).get('a-12'), await text(next[12] as SessionFile), 'and a-12 goes through once the server answers in time')
})

t.test('a dropped connection fails every save of the batch with a 503; once it passes, they all land', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const db = inspector(t, url)
  const { proxy, url: through } = await throughProxy(t, url)
  const store = await openStore(t, through, { max: 2, statementTimeoutMs: 1_500 })
  const files = Array.from({ length: 40 }, (_, i) => contractSession(`d-${i}`, ['Pending']))
  for (const file of files) await store.save(file)
  proxy.drop()
  const next = files.map((file) => contractSession(file.session_id, ['Completed'], '2024-07-01T00:00:00.000Z'))
  const outcomes = await Promise.allSettled(next.map(async (file) => store.save(file)))
  t.ok(outcomes.every((outcome) => outcome.status === 'rejected' && (outcome.reason as { code?: string }).code === 'STORAGE_UNAVAILABLE'), 'every save failed with a 503')
  const unchanged = await documents(db)
  for (const file of files) if (unchanged.get(file.session_id) !== await text(file)) t.fail(`${file.session_id} unchanged`)
  proxy.pass()
  await Promise.all(next.map(async (file) => store.save(file)))
  const stored = await documents(db)
  for (const file of next) if (stored.get(file.session_id) !== await text(file)) t.fail(`${file.session_id} landed`)
  t.pass('after the network comes back every save lands, none taken for a conflict')
})

t.test('TASK_DB_SAVE_BATCH 1, or a byte bound below one session, writes every save alone', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const db = inspector(t, url)
  const alone = await openStore(t, url, { max: 1, saveBatch: 1 })
  const files = Array.from({ length: 20 }, (_, i) => contractSession(`s-${i}`))
  await Promise.all(files.map(async (file) => alone.save(file)))
  t.equal(await transactions(db, files.map((file) => file.session_id)), 20, 'saveBatch 1: one commit each')
  const small = await openStore(t, url, { max: 1, saveBatchBytes: 1024 })
  const big = Array.from({ length: 20 }, (_, i) => contractSession(`b-${i}`, ['Pending', 'Pending', 'Pending', 'Pending', 'Pending']))
  await Promise.all(big.map(async (file) => small.save(file)))
  t.equal(await transactions(db, big.map((file) => file.session_id)), 20, 'sessions over the byte bound: one commit each')
})
