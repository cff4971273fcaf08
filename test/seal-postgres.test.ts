/**
 * `taskvault seal --database-url`: key rotation on the PostgreSQL store, run as operators run it
 * (a child process), killed with SIGKILL midway and run again, beside a store that keeps
 * saving; then the old key goes and every session reads as it was.
 */
import { spawn } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import pg from 'pg'
import t from 'tap'
import type { SessionFile } from '../schemas/session.js'
import { noop } from '../services/noop.js'
import { Keyring } from '../services/store/keyring.js'
import { connectionConfig } from '../services/store/postgres/pool.js'
import { PostgresSessionStore } from '../services/store/postgres/postgres-store.js'
import { CLI, taskvault } from './cli-run.js'
import { node } from './node-child.js'
import type { TestContext } from './helper.js'
import { testDatabase } from './postgres.js'
import { contractSession } from './store-contract.js'

const OLD = randomBytes(32).toString('base64')
const NEW = randomBytes(32).toString('base64')
const SECRET = 'the-launch-code-is-0000'

async function openStore (t: TestContext, url: string, keys: string | null): Promise<PostgresSessionStore> {
  const store = new PostgresSessionStore({ settings: { url, schema: 'taskvault', max: 4, statementTimeoutMs: 10_000 }, keyring: keys === null ? null : Keyring.parse(keys) })
  await store.init()
  t.teardown(() => store.close())
  return store
}

async function kids (url: string): Promise<Map<string, string | null>> {
  const client = new pg.Client(connectionConfig({ url, schema: 'taskvault', max: 1, statementTimeoutMs: 10_000 }))
  client.on('error', noop)
  await client.connect()
  try {
    const { rows } = await client.query<{ row_id: string, kid: string | null, column: string | null }>("SELECT row_id, document->'sealed'->>'kid' AS kid, sealed_kid AS column FROM sessions")
    for (const row of rows) if (row.kid !== row.column) throw new Error(`row ${row.row_id}: the sealed_kid column says ${row.column ?? 'null'}, the document ${row.kid ?? 'null'}`)
    return new Map(rows.map((row) => [row.row_id, row.kid]))
  } finally {
    await client.end().catch(noop)
  }
}

const sleep = async (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms))

t.test('seal --database-url: kill -9 midway, run again, a server keeps saving without a conflict, the old key goes and nothing is lost', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const old = await openStore(t, url, `old:${OLD}`)
  const files = Array.from({ length: 1_500 }, (_, i) => {
    const file = contractSession(`s${String(i).padStart(4, '0')}`, ['Completed', 'Pending'])
    const first = file.session.tasks[0]
    if (first !== undefined) first.instruction = `${SECRET} ${i}`
    return file
  })
  for (let i = 0; i < files.length; i += 100) await Promise.all(files.slice(i, i + 100).map(async (file) => old.save(file)))
  await old.archive(files[1] as SessionFile)
  const plain = await openStore(t, url, null)
  const clear = contractSession('in-clear', ['Pending'])
  await plain.save(clear)
  const originals = new Map([...files, clear].map((file) => [file.session_id, JSON.stringify(file)]))

  // A server that read every row before the rotation, with the new key first.
  const server = await openStore(t, url, `new:${NEW},old:${OLD}`)
  await server.loadAll({ concurrency: 1 })

  const env = { DATABASE_URL: url, TASK_ENCRYPTION_KEYS: `new:${NEW},old:${OLD}` }
  const child = spawn(...node([CLI, 'seal', '--database-url', url]), { env: { PATH: process.env.PATH ?? '', ...env }, stdio: 'ignore' })
  for (let waited = 0; waited < 30_000; waited += 20) {
    if ([...(await kids(url)).values()].filter((kid) => kid === 'new').length >= 50) break
    await sleep(20)
  }
  child.kill('SIGKILL')
  await new Promise((resolve) => child.once('close', resolve))
  const midway = [...(await kids(url)).values()]
  const done = midway.filter((kid) => kid === 'new').length
  t.ok(done >= 50 && done < midway.length, `killed midway: ${done} of ${midway.length} rows re-sealed`)
  t.equal(midway.length, files.length + 1, 'every row is still there')

  // The server saves a session the killed run may or may not have re-sealed: no conflict either way.
  const changed = contractSession('s0007', ['Completed', 'Completed'], '2025-01-01T00:00:00.000Z')
  await server.save(changed)
  originals.set('s0007', JSON.stringify(changed))
  t.pass('a server\'s save after the seal touched the row goes through')

  const again = await taskvault(['seal', '--database-url', url, '--json'], { env })
  t.equal(again.code, 0, again.stderr)
  const report = again.json()
  t.ok(report.sealed > 0 && report.sealed < files.length - done + 2, `the rerun does only what was left (${report.sealed as number} rows)`)
  t.match(report, { kid: 'new', unreadable: 0, underKey: files.length + 1, other: 0 })
  t.notMatch(again.stdout + again.stderr, NEW.slice(0, 12), 'no key in its output')
  t.ok([...(await kids(url)).values()].every((kid) => kid === 'new'), 'every row, active and archived, plaintext before or not, is under the new key')

  const nothing = await taskvault(['seal', '--database-url', url, '--json'], { env })
  t.match(nothing.json(), { sealed: 0, underKey: files.length + 1, other: 0 }, 'a third run has nothing to do')

  // The old key can go.
  const fresh = await openStore(t, url, `new:${NEW}`)
  const loaded = await fresh.loadAll({ concurrency: 1 })
  t.same(loaded.failures, [])
  t.equal(loaded.sessions.length, files.length, 'every active session')
  t.ok(loaded.sessions.every((session) => JSON.stringify(session.file) === originals.get(session.file.session_id)), 'each as it was last saved')
  const archived = await fresh.readArchived('s0001')
  t.equal(JSON.stringify(archived.session?.file), originals.get('s0001'), 'the archived copy opens too')
})

t.test('seal --database-url: no keys, an unreadable row, a folder and a URL together', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const store = await openStore(t, url, null)
  await store.save(contractSession('fine'))
  await store.save(contractSession('broken'))
  const client = new pg.Client(connectionConfig({ url, schema: 'taskvault', max: 1, statementTimeoutMs: 10_000 }))
  client.on('error', noop)
  await client.connect()
  t.teardown(() => client.end().catch(noop))
  await client.query('UPDATE sessions SET document = \'{"session_id": "broken"}\' WHERE session_id = \'broken\'')

  const keyless = await taskvault(['seal', '--database-url', url], { env: {} })
  t.equal(keyless.code, 2, 'a bad setting')
  t.match(keyless.stderr, /TASK_ENCRYPTION_KEYS is not set/u)

  const env = { TASK_ENCRYPTION_KEYS: `new:${NEW}` }
  const run = await taskvault(['seal', '--database-url', url, '--json'], { env })
  t.equal(run.code, 1, 'exit 1: a row could not be read')
  t.match(run.json(), { sealed: 1, unreadable: 1, underKey: 1, other: 1, problems: [{ file: /^broken@\d+$/u }] })
  t.notMatch((run.json() as { problems: Array<{ reason: string }> }).problems[0]?.reason, /broken@/u, 'the reason does not name the row again')
  t.equal((await client.query<{ document: string }>('SELECT document::text AS document FROM sessions WHERE session_id = \'broken\'')).rows[0]?.document, '{"session_id": "broken"}', 'the unreadable row is left as it was')

  const both = await taskvault(['seal', 'data/tasks', '--database-url', url], { env })
  t.equal(both.code, 2, 'a folder and a URL: a usage error')
})

t.test('seal --database-url with a mistyped key under a kid it only opens says the key is likely wrong, besides each row', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const store = await openStore(t, url, `old:${OLD}`)
  await store.save(contractSession('one'))
  await store.save(contractSession('two'))
  await store.close()
  const run = await taskvault(['seal', '--database-url', url], { env: { TASK_ENCRYPTION_KEYS: `new:${NEW},old:${randomBytes(32).toString('base64')}` } })
  t.equal(run.code, 1, run.stderr)
  t.match(run.stderr, /❌ one@\d+: authentication failed/u)
  t.match(run.stderr, /❌ key 'old' opens none of the 2 rows sealed under it: TASK_ENCRYPTION_KEYS likely holds a different key under that kid .*those rows were left as they are/u)
  t.same([...(await kids(url)).values()], ['old', 'old'], 'both rows as they were')
  // validate names the kid of each row that did not open, as the rotation runbook looks for it.
  const env = { TASK_ENCRYPTION_KEYS: `old:${randomBytes(32).toString('base64')}` }
  const text = await taskvault(['validate', '--database-url', url], { env })
  t.equal(text.code, 1)
  t.match(text.stdout, /^❌ one@\d+ \(sealed, key old\): authentication failed$/mu)
  const json = await taskvault(['validate', '--database-url', url, '--json'], { env })
  t.match(json.json(), { bad: 2, files: [{ file: /^one@/u, ok: false, kid: 'old' }, { file: /^two@/u, ok: false, kid: 'old' }] })
})

t.test('seal --database-url with a mistyped key under the kid some rows are sealed under writes nothing; the right key seals the rest', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const sealedStore = await openStore(t, url, `k1:${OLD}`)
  for (const id of ['sealed_a', 'sealed_b']) await sealedStore.save(contractSession(id))
  const plain = await openStore(t, url, null)
  await plain.save(contractSession('plain_a'))
  const client = new pg.Client(connectionConfig({ url, schema: 'taskvault', max: 1, statementTimeoutMs: 10_000 }))
  client.on('error', noop)
  await client.connect()
  t.teardown(() => client.end().catch(noop))
  // No server booted with the key: the store keeps no check of it.
  await client.query('DELETE FROM key_checks')
  const rows = async (): Promise<string> => JSON.stringify((await client.query('SELECT row_id, sealed_kid, document::text AS document FROM sessions ORDER BY row_id')).rows)
  const before = await rows()

  const wrong = await taskvault(['seal', '--database-url', url], { env: { TASK_ENCRYPTION_KEYS: `k1:${NEW}` } })
  t.equal(wrong.code, 1)
  t.match(wrong.stderr, /cannot seal: key 'k1' opens none of the 2 rows sealed under it; .*nothing was written/)
  t.equal(await rows(), before, 'no row changed')

  const right = await taskvault(['seal', '--database-url', url, '--json'], { env: { TASK_ENCRYPTION_KEYS: `k1:${OLD}` } })
  t.equal(right.code, 0, right.stderr)
  t.match(right.json(), { sealed: 1, underKey: 3, other: 0 })
})

t.test('a sealed_kid column that disagrees with its document (edited by hand) is put right by seal, and by a restore', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const store = await openStore(t, url, `new:${NEW},old:${OLD}`)
  for (const id of ['a', 'b', 'c']) await store.save(contractSession(id, ['Pending']))
  await store.close()
  const client = new pg.Client(connectionConfig({ url, schema: 'taskvault', max: 1, statementTimeoutMs: 10_000 }))
  client.on('error', noop)
  await client.connect()
  t.teardown(() => client.end().catch(noop))
  // Each document is under `new`; the column says `old`.
  await client.query("UPDATE sessions SET sealed_kid = 'old'")
  const env = { TASK_ENCRYPTION_KEYS: `new:${NEW},old:${OLD}` }
  const run = await taskvault(['seal', '--database-url', url, '--json'], { env })
  t.equal(run.code, 0, run.stderr)
  t.match(run.json(), { sealed: 3, underKey: 3, other: 0 }, 'the columns put right: nothing left under the old key')
  await kids(url)
  t.match((await taskvault(['seal', '--database-url', url, '--json'], { env })).json(), { sealed: 0, underKey: 3, other: 0 }, 'and a second run finds nothing to do')

  await client.query("UPDATE sessions SET sealed_kid = 'old' WHERE session_id = 'b'")
  const restored = await openStore(t, url, `new:${NEW},old:${OLD}`)
  await restored.loadAll({ concurrency: 1 })
  await kids(url)
  t.pass('a restore puts the column right too')
})
