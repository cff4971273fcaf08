/**
 * Boot failures as a person starting the server meets them: the compiled server in a child
 * process, exiting 1 with one `taskvault: cannot start: ...` line that names the setting to
 * change, never listening and never hanging.
 */
import { spawnSync } from 'node:child_process'
import { existsSync } from 'node:fs'
import { mkdir, writeFile } from 'node:fs/promises'
import { createServer as createHttpServer } from 'node:http'
import { createServer, type AddressInfo, type Server } from 'node:net'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import t from 'tap'
import { inspector, openTestStore, testDatabase } from './postgres.js'
import { contractSession } from './store-contract.js'
import { baseEnv, describe, EXIT_TIMEOUT_MS, exitWithin, freePort, scratch, waitReady, type ServerProcess } from './server-process.js'

type TapTest = Parameters<Parameters<typeof t.test>[0]>[0]

/** The server's exit and its stderr's lines, after a start that must fail. */
async function failedStart (t: TapTest, server: ServerProcess, name: string): Promise<string[]> {
  const exit = await exitWithin(server, EXIT_TIMEOUT_MS)
  t.same(exit, { code: 1, signal: null }, `${name}: exits 1, like every boot failure`, { output: describe(server) })
  t.notOk(server.stdout().includes('Server listening'), `${name}: never listened`)
  const lines = server.stderr().split('\n').filter((line) => line !== '')
  t.equal(lines.length, 1, `${name}: one line on stderr`, { stderr: server.stderr() })
  t.match(lines[0], /^taskvault: cannot start: /u, `${name}: the boot error's line`)
  return lines
}

t.test('a port already taken: one line naming PORT, exit 1, the storage lock released', async (t) => {
  const { dir, spawnRaw } = await scratch(t)
  const taken: Server = createServer()
  await new Promise<void>((resolve, reject) => taken.once('error', reject).listen(0, '127.0.0.1', resolve))
  t.teardown(() => { taken.close() })
  const port = (taken.address() as AddressInfo).port
  const storage = join(dir, 'tasks')
  const server = spawnRaw(baseEnv({ PORT: String(port), TASK_STORAGE_DIR: storage }))
  const [line] = await failedStart(t, server, 'EADDRINUSE')
  t.match(line, new RegExp(`PORT ${port} on 127\\.0\\.0\\.1 is already in use`, 'u'), 'names PORT and its value')
  t.notMatch(server.stdout(), /"level":60/u, 'no fatal JSON log line')
  t.notOk(existsSync(join(storage, '.taskvault.lock')), 'the storage lock is not left behind')
})

t.test('a port held by another HTTP server that answers /ready: waiting for readiness sees this server fail, not the other\'s 200', async (t) => {
  // Parallel test files pick free ports: two may pick the same, and the loser must be retried.
  const { dir, spawnRaw } = await scratch(t)
  const other = createHttpServer((_req, res) => { res.end('{"status":"ready"}') })
  await new Promise<void>((resolve, reject) => other.once('error', reject).listen(0, '127.0.0.1', resolve))
  t.teardown(() => { other.close() })
  const port = (other.address() as AddressInfo).port
  const server = spawnRaw(baseEnv({ PORT: String(port), TASK_STORAGE_DIR: join(dir, 'tasks') }))
  const outcome = await waitReady(server).then(() => 'ready', (err: Error) => err.message)
  t.match(outcome, /^server exited before it was ready/u, 'the wait ends with the exit', { output: describe(server) })
  t.match(server.stderr(), /EADDRINUSE/u, 'which was the port in use')
})

t.test('a settings file that is a pipe nobody writes to fails the boot in SETTING_FILE_WAIT_MS, naming the setting; one whose writer comes late is read', async (t) => {
  const { dir, spawnRaw } = await scratch(t)
  const fifo = join(dir, 'agents.fifo')
  t.equal(spawnSync('mkfifo', [fifo]).status, 0, 'mkfifo')
  const started = performance.now()
  const server = spawnRaw(baseEnv({ PORT: String(await freePort()), TASK_STORAGE_DIR: join(dir, 'tasks'), TASK_AGENTS: `@${fifo}` }))
  const [line] = await failedStart(t, server, 'TASK_AGENTS=@fifo')
  t.match(line, /TASK_AGENTS: cannot read .*agents\.fifo: a pipe that gave nothing within 5000 ms/u)
  t.ok(performance.now() - started < EXIT_TIMEOUT_MS, 'no hang')
  // A writer that opens the pipe after the server did (a secrets helper): its text is the setting.
  const late = spawnRaw(baseEnv({ PORT: String(await freePort()), TASK_STORAGE_DIR: join(dir, 'tasks'), TASK_AGENTS: `@${fifo}` }))
  await sleep(500)
  await writeFile(fifo, '{"default": {"kind": "nope"}}')
  const [bad] = await failedStart(t, late, 'TASK_AGENTS=@fifo, written late')
  t.match(bad, /TASK_AGENTS\.default/u, 'the text written was read and judged')
})

t.test('a FIFO named .taskvault in the storage folder is no marker: the boot fails at once, not waiting for a writer', async (t) => {
  const { dir, spawnRaw } = await scratch(t)
  const storage = join(dir, 'tasks')
  await mkdir(storage)
  t.equal(spawnSync('mkfifo', [join(storage, '.taskvault')]).status, 0, 'mkfifo')
  const server = spawnRaw(baseEnv({ PORT: String(await freePort()), TASK_STORAGE_DIR: storage }))
  const [line] = await failedStart(t, server, 'a FIFO marker')
  t.match(line, /\.taskvault is not a taskvault marker \(not a regular file\)/u)
})

t.test('a FIFO named .env in the working directory fails the boot at once, naming it, not waiting for a writer', async (t) => {
  const { dir, spawnRaw } = await scratch(t)
  t.equal(spawnSync('mkfifo', [join(dir, '.env')]).status, 0, 'mkfifo')
  const server = spawnRaw(baseEnv({ PORT: String(await freePort()), TASK_STORAGE_DIR: join(dir, 'tasks') }), dir)
  const [line] = await failedStart(t, server, 'a FIFO .env')
  t.match(line, /\.\/\.env cannot be read \(ENOTREG\); fix or remove it/u)
})

t.test('a choice-list setting with a bad value: one line listing the allowed values', async (t) => {
  const { dir, spawnRaw } = await scratch(t)
  const cases = [
    { name: 'LOG_LEVEL', value: 'loud', allowed: 'fatal, error, warn, info, debug, trace, silent' },
    { name: 'TASK_STORE', value: 'mysql', allowed: 'file, postgres' }
  ]
  for (const c of cases) {
    const server = spawnRaw(baseEnv({ PORT: String(await freePort()), TASK_STORAGE_DIR: join(dir, 'tasks'), [c.name]: c.value }))
    const [line] = await failedStart(t, server, `${c.name}=${c.value}`)
    t.equal(line, `taskvault: cannot start: ${c.name} must be one of ${c.allowed}`)
  }
})

t.test('a storage folder that cannot be created (/proc/nope) fails at once, naming TASK_STORAGE_DIR', { skip: existsSync('/proc/self') ? false : 'needs /proc' }, async (t) => {
  const { spawnRaw } = await scratch(t)
  const server = spawnRaw(baseEnv({ PORT: String(await freePort()), TASK_STORAGE_DIR: '/proc/nope/tasks' }))
  const [line] = await failedStart(t, server, 'TASK_STORAGE_DIR=/proc/nope/tasks')
  t.match(line, /storage folder \/proc\/nope\/tasks \(TASK_STORAGE_DIR\) cannot be used: ENOENT/u)
})

t.test('PostgreSQL: a restore the database answers with an error (a column dropped by hand) fails the boot at once, with the database\'s own words; it is no database gone away, waited out for TASK_DB_CONNECT_TIMEOUT_MS', async (t) => {
  const url = await testDatabase(t)
  if (url === null) return
  const store = await openTestStore(t, url, 'taskvault')
  await store.save(contractSession('kept', ['Pending']))
  await store.close()
  await inspector(t, url, 'taskvault').query('ALTER TABLE taskvault.sessions DROP COLUMN bytes')
  const { dir, spawnRaw } = await scratch(t)
  const started = performance.now()
  const server = spawnRaw(baseEnv({ PORT: String(await freePort()), TASK_STORAGE_DIR: join(dir, 'tasks'), TASK_STORE: 'postgres', DATABASE_URL: url, TASK_DB_CONNECT_TIMEOUT_MS: '30000' }))
  const [line] = await failedStart(t, server, 'a column missing')
  t.match(line, /column "?bytes"? does not exist/u, 'says what the database said', { line })
  t.notMatch(server.stdout(), /went away during the restore/u, 'not waited out as a database gone away')
  t.ok(performance.now() - started < 20_000, `well before TASK_DB_CONNECT_TIMEOUT_MS (${Math.round(performance.now() - started)} ms of 30,000)`)
})
