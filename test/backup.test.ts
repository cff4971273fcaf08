/**
 * Backups the way the seed makes them, and live ones over HTTP: GET /backup streams a consistent
 * tar.gz while sessions change, `taskvault restore` reads it and the seed's own tar (refusing
 * unsafe ones), and `taskvault backup --out-dir --keep-days` keeps the seed's naming and deletes
 * only its own old backups.
 */
import { execFile, spawn } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { once } from 'node:events'
import { createWriteStream, existsSync } from 'node:fs'
import { mkdir, readFile, readdir, symlink, utimes, writeFile } from 'node:fs/promises'
import { request } from 'node:http'
import { connect, type AddressInfo, type Socket } from 'node:net'
import { join } from 'node:path'
import { Readable } from 'node:stream'
import { setTimeout as sleep } from 'node:timers/promises'
import { fileURLToPath } from 'node:url'
import { promisify } from 'node:util'
import type { FastifyInstance } from 'fastify'
import t from 'tap'
import { parseAllDocuments } from 'yaml'
import { BACKUP_FILE, backupFileName } from '../services/backup/backup.js'
import { parseSessionFile } from '../services/store/session-files.js'
import { nodeFs } from '../services/store/fs-seam.js'
import { readTarGz, writeTarGz } from '../services/backup/tar.js'
import { taskvault } from './cli-run.js'
import { documents } from './manifests.js'
import { API, archivedSession, build, get, memoryLog, post, tempDir, type TestContext } from './helper.js'
import { kernelConnection, scratch } from './server-process.js'
import { storedSession } from './session-fixtures.js'
import { faultFs } from './faults.js'

const run = promisify(execFile)
const DAY = 86_400_000

async function entries (tar: Buffer): Promise<Map<string, Buffer>> {
  const files = new Map<string, Buffer>()
  for await (const entry of readTarGz(Readable.from([tar]))) files.set(entry.name, entry.data)
  return files
}

async function jsonFiles (dir: string): Promise<string[]> {
  if (!existsSync(dir)) return []
  const names = (await readdir(dir)).filter((name) => name.endsWith('.json'))
  if (existsSync(join(dir, 'archive'))) names.push(...(await readdir(join(dir, 'archive'))).map((name) => `archive/${name}`))
  return names.sort()
}

/**
 * A storage folder of `count` sessions whose instructions are incompressible: their archive is
 * far larger than the socket buffers, so a client that stops reading holds the answer back.
 */
async function bulkyFolder (t: TestContext, count: number): Promise<string> {
  const dir = await tempDir(t, 'taskvault-backup-')
  for (let i = 0; i < count; i++) {
    await writeFile(join(dir, `s${i}.json`), storedSession(`s${i}`, ['Pending'], '2026-01-01T00:00:00.000Z', randomBytes(48_000).toString('base64')), { mode: 0o600 })
  }
  return dir
}

/** The app on a bulkyFolder of `count` sessions, logging to memory, with `config`. */
async function bulkyApp (t: TestContext, count: number, config: Record<string, number>): Promise<{ app: FastifyInstance, log: ReturnType<typeof memoryLog> }> {
  const log = memoryLog()
  const app = await build(t, { dir: await bulkyFolder(t, count), logger: log.logger, config: { TASK_ARCHIVE_DAYS: 0, ...config } })
  return { app, log }
}

/**
 * A connection (read on, so it lives) carrying an event stream, with a GET /backup pipelined
 * behind it: the backup has no socket of its own while the stream lasts. Closed when the test ends.
 */
async function backupBehindStream (t: TestContext, app: FastifyInstance): Promise<Socket> {
  await app.listen({ port: 0, host: '127.0.0.1' })
  const socket = connect((app.server.address() as AddressInfo).port, '127.0.0.1')
  socket.on('error', () => {})
  socket.resume()
  t.teardown(() => { socket.destroy() })
  await once(socket, 'connect')
  socket.write(`GET ${API}/events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\nGET ${API}/backup HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n`)
  return socket
}

/** GET /backup through inject, whole. */
async function backup (app: FastifyInstance, headers: Record<string, string> = {}): Promise<{ status: number, headers: Record<string, unknown>, body: Buffer }> {
  const res = await app.inject({ method: 'GET', url: `${API}/backup`, headers })
  return { status: res.statusCode, headers: res.headers, body: res.rawPayload }
}

t.test('GET /backup: API keys, its name, a tar any tar reads, restored into an empty folder that boots', async (t) => {
  const keyed = { authorization: 'Bearer k1' }
  const app = await build(t, { config: { TASK_API_KEYS: 'k1', TASK_ARCHIVE_DAYS: 0 } })
  const call = async (method: 'GET' | 'POST', path: string, body?: object) => app.inject({ method, url: `${API}${path}`, headers: keyed, ...(body && { payload: body }) })
  t.equal((await call('POST', '/create', { session_id: 'done', instructions: 'only step' })).statusCode, 200)
  t.equal((await call('POST', '/execute', { session_id: 'done' })).statusCode, 200)
  t.equal((await call('POST', '/archive', { older_than_days: 0 })).json().archived, 1, 'done is archived')
  for (const id of ['alpha', 'beta', 'gamma']) t.equal((await call('POST', '/create', { session_id: id, instructions: `1. ${id} one\n2. ${id} two` })).statusCode, 200)
  t.equal((await call('POST', '/execute', { session_id: 'beta' })).statusCode, 200)

  t.equal((await backup(app)).status, 401, 'no key: 401')
  t.equal((await backup(app, { authorization: 'Bearer wrong' })).status, 401, 'a wrong key: 401')
  const res = await backup(app, keyed)
  t.equal(res.status, 200)
  t.equal(res.headers['content-type'], 'application/gzip')
  const name = /^attachment; filename="([^"]+)"$/u.exec(String(res.headers['content-disposition']))?.[1] ?? ''
  t.match(name, BACKUP_FILE, `Content-Disposition names the file (${name})`)

  const folder = await tempDir(t, 'taskvault-backup-')
  const file = join(folder, name)
  await writeFile(file, res.body)
  const listed = (await run('tar', ['-tzf', file])).stdout.trim().split('\n').sort()
  t.same(listed, ['alpha.json', 'archive/done.json', 'beta.json', 'gamma.json'], 'GNU tar lists every session, archived ones under archive/')
  for (const [entry, data] of await entries(res.body)) {
    const id = /([^/]+)\.json$/u.exec(entry)?.[1] as string
    const stored = parseSessionFile(entry, data.toString('utf8'), id)
    const shown = (await call('GET', `/list?session_id=${id}`)).json()
    t.same(stored.session.tasks, shown.tasks, `${entry}: the tasks the API shows`)
  }

  const target = join(folder, 'restored')
  const restore = await taskvault(['restore', file, target, '--json'])
  t.equal(restore.code, 0, restore.stderr)
  t.match(restore.json(), { restored: 4, conflicts: [] })
  const again = await build(t, { dir: target })
  const stats = (await get(again, '/stats')).json()
  t.match(stats, { total_sessions: 3, archived_sessions: 1, completed_tasks: 1, pending_tasks: 5 }, 'the restored folder boots with every session')
  t.equal((await get(again, '/progress?session_id=done')).json().archived, true, 'the archived one is archived')
})

t.test('GET /backup while a background run and 16 writers change sessions: each session is a state that was acknowledged', async (t) => {
  const app = await build(t, {
    config: { TASK_ARCHIVE_DAYS: 0 },
    // A short real wait per task, so the run is mid-way while the backup is taken.
    executors: { default: async (task) => { await new Promise((resolve) => setTimeout(resolve, 2)); return { result: `done: ${task.instruction}` } } }
  })
  const RUN_TASKS = 150
  t.equal((await post(app, '/create', { session_id: 'bg', tasks: Array.from({ length: RUN_TASKS }, (_, i) => ({ instruction: `run ${i}` })) })).statusCode, 200)
  t.equal((await post(app, '/execute-all', { session_id: 'bg', wait: false })).statusCode, 202)

  // Writer i appends `w<i> task <k>` one at a time: its acknowledged states are the prefixes.
  const WRITERS = 16
  const acked = new Array<number>(WRITERS).fill(0)
  const sent = new Array<number>(WRITERS).fill(0)
  let stop = false
  const writers = Array.from({ length: WRITERS }, async (_, i) => {
    while (!stop) {
      const k = sent[i] as number
      sent[i] = k + 1
      const res = await post(app, '/create', { session_id: `w${i}`, tasks: [{ instruction: `w${i} task ${k}` }] })
      if (res.statusCode !== 200) throw new Error(`writer ${i}: ${res.statusCode} ${res.body}`)
      acked[i] = k + 1
    }
  })
  while (acked.some((count) => count < 3)) await new Promise((resolve) => setTimeout(resolve, 5))
  const ackedBefore = [...acked]
  const res = await backup(app)
  const sentAfter = [...sent]
  stop = true
  await Promise.all(writers)
  t.equal(res.status, 200)
  const files = await entries(res.body)
  t.same([...files.keys()].sort(), ['bg.json', ...Array.from({ length: WRITERS }, (_, i) => `w${i}.json`)].sort(), 'every session, once')

  for (let i = 0; i < WRITERS; i++) {
    const stored = parseSessionFile(`w${i}.json`, (files.get(`w${i}.json`) as Buffer).toString('utf8'), `w${i}`)
    const instructions = stored.session.tasks.map((task) => task.instruction)
    const k = instructions.length
    t.same(instructions, Array.from({ length: k }, (_, j) => `w${i} task ${j}`), `w${i}: a prefix of what was sent, in order`)
    t.ok(k >= (ackedBefore[i] as number) && k <= (sentAfter[i] as number), `w${i}: ${k} tasks, between the ${ackedBefore[i]} acknowledged before and the ${sentAfter[i]} sent by the end`)
  }

  // The run goes on to its end; the backup's copy is a state on its way there.
  const deadline = Date.now() + 60_000
  while ((await get(app, '/progress?session_id=bg')).json().running === true && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 20))
  const final = (await get(app, '/list?session_id=bg')).json().tasks as Array<Record<string, unknown>>
  const copy = parseSessionFile('bg.json', (files.get('bg.json') as Buffer).toString('utf8'), 'bg').session.tasks
  const done = copy.filter((task) => task.status === 'Completed').length
  t.ok(done > 0 && done < RUN_TASKS, `taken mid-run: ${done} of ${RUN_TASKS} completed`)
  t.ok(copy.filter((task) => task.status === 'InProgress').length <= 1, 'at most one task running')
  copy.forEach((task, i) => {
    const expected = i < done ? 'Completed' : i === done ? ['InProgress', 'Pending'] : 'Pending'
    if (!(Array.isArray(expected) ? expected.includes(task.status) : task.status === expected)) t.fail(`bg task ${i}: ${task.status} after ${done} completed`)
    if (task.status === 'Completed') t.same(task, final[i], `bg task ${i}: completed as it ended`)
    if (task.status === 'InProgress') t.match(final[i], { started_at: task.started_at, attempts: task.attempts }, `bg task ${i}: the start that was recorded`)
  })

  const folder = await tempDir(t, 'taskvault-backup-')
  await writeFile(join(folder, 'live.tar.gz'), res.body)
  const restore = await taskvault(['restore', join(folder, 'live.tar.gz'), join(folder, 'tasks'), '--json'])
  t.equal(restore.code, 0, restore.stderr)
  const again = await build(t, { dir: join(folder, 'tasks'), config: { TASK_RESUME_ON_START: false } })
  t.equal((await get(again, '/stats')).json().total_sessions, WRITERS + 1, 'the restored folder boots with every session')
})

t.test('GET /backup while a session is being brought back from the archive carries it: the session is in neither the archive nor the active ones until that write ends', async (t) => {
  const fs = faultFs()
  const app = await build(t, { fs, config: { TASK_ARCHIVE_DAYS: 0 } })
  await archivedSession(app, 'keep', 'first')
  // The bring-back is held at its last step: the archive folder's sync, after its copy went.
  const gate = fs.hold('dirsync', { path: (path) => path.endsWith('/archive') })
  const back = post(app, '/create', { session_id: 'keep', instructions: 'more' })
  await gate.reached
  const taking = backup(app)
  await sleep(200)
  gate.release()
  const [res, created] = await Promise.all([taking, back])
  t.equal(created.statusCode, 200)
  t.equal(res.status, 200)
  const entries: Array<{ name: string, data: Buffer }> = []
  for await (const entry of readTarGz(Readable.from([res.body]))) entries.push(entry)
  t.same(entries.map((entry) => entry.name), ['keep.json'], 'the session is in the backup, once')
  t.same(parseSessionFile('keep.json', entries[0]?.data.toString('utf8') ?? '', 'keep').session.tasks.map((task) => task.instruction), ['first', 'more'], 'as brought back')
})

t.test('a client that goes away mid-backup: the walk stops, nothing leaks, the server goes on', async (t) => {
  const SESSIONS = 200
  const { app, log } = await bulkyApp(t, SESSIONS, {})
  await app.listen({ port: 0, host: '127.0.0.1' })
  const { port } = app.server.address() as AddressInfo
  const received = await new Promise<number>((resolve, reject) => {
    const req = request({ host: '127.0.0.1', port, path: `${API}/backup` }, (res) => {
      res.once('data', (chunk: Buffer) => {
        req.destroy()
        resolve(chunk.length)
      })
    })
    req.on('error', (err) => { if (!req.destroyed) reject(err) })
    req.end()
  })
  t.ok(received > 0, 'the stream had started')
  const deadline = Date.now() + 10_000
  while (!log.messages().includes('Backup stopped before its end') && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 20))
  t.ok(log.messages().includes('Backup stopped before its end'), 'the server saw the client go and stopped')
  t.notOk(log.messages().some((msg) => msg.startsWith('Backup streamed')), 'it did not go on to the end')
  t.equal(app.taskManager.registry.slotCount, SESSIONS, 'no session slot left behind by the walk')
  t.equal((await app.inject({ method: 'GET', url: '/health' })).statusCode, 200, 'the server goes on')
  const whole = await backup(app)
  t.equal((await entries(whole.body)).size, SESSIONS, 'and the next backup is whole')
})

t.test('a client that stops reading holds a backup place until TASK_BACKUP_STALL_MS cuts it; past TASK_BACKUP_MAX_CLIENTS the answer is 503', async (t) => {
  const SESSIONS = 200
  const { app, log } = await bulkyApp(t, SESSIONS, { TASK_BACKUP_MAX_CLIENTS: 1, TASK_BACKUP_STALL_MS: 1500 })
  await app.listen({ port: 0, host: '127.0.0.1' })
  const { port } = app.server.address() as AddressInfo
  // A client that asks for a backup, takes its first bytes, then reads no more.
  const stalled = await new Promise<{ destroy: () => void, localPort: number }>((resolve, reject) => {
    const req = request({ host: '127.0.0.1', port, path: `${API}/backup` }, (res) => {
      res.once('data', () => {
        res.pause()
        resolve({ destroy: () => req.destroy(), localPort: req.socket?.localPort as number })
      })
    })
    req.on('error', (err) => { if (!req.destroyed) reject(err) })
    req.end()
  })
  t.teardown(() => { stalled.destroy() })
  const second = await backup(app)
  t.equal(second.status, 503, 'one backup at a time: the second is refused while the first is sent')
  t.match(JSON.parse(second.body.toString()), { statusCode: 503, code: 'TOO_MANY_BACKUPS', message: /TASK_BACKUP_MAX_CLIENTS/ })
  t.equal((await app.inject({ method: 'HEAD', url: `${API}/backup` })).statusCode, 200, 'a HEAD makes no backup and takes no place')

  const deadline = Date.now() + 15_000
  while (!log.messages().some((msg) => msg.startsWith('Backup cut')) && Date.now() < deadline) await sleep(50, undefined, { ref: false })
  t.ok(log.messages().some((msg) => msg.startsWith('Backup cut: its client took nothing')), 'the stalled backup is cut')
  // With a reset: the kernel drops the megabytes it still held for the client, rather than
  // keeping them (and the connection) until the client reads or the kernel gives up, minutes later.
  t.equal(await kernelConnection(port, stalled.localPort, 2000), null, 'the kernel holds no connection to the stalled client (state, in /proc/net/tcp\'s hex)')
  let whole = await backup(app)
  for (let tries = 0; whole.status === 503 && tries < 40; tries++) {
    await sleep(50, undefined, { ref: false })
    whole = await backup(app)
  }
  t.equal(whole.status, 200, 'its place is free again')
  t.equal((await entries(whole.body)).size, SESSIONS, 'and the next backup is whole')
  t.equal((await backup(app)).status, 200, 'a finished backup gives its place back too')
  t.equal(app.taskManager.registry.slotCount, SESSIONS, 'no session slot left behind by the cut walk')
})

t.test('a backup pipelined behind a stream on one connection waits for a turn that never comes: it takes no place, and nothing is made for it', async (t) => {
  // Bulky, so an answer made for the queued backup would show as memory and a place held.
  const SESSIONS = 100
  const { app, log } = await bulkyApp(t, SESSIONS, { TASK_BACKUP_MAX_CLIENTS: 1, TASK_BACKUP_STALL_MS: 500 })
  const socket = await backupBehindStream(t, app)
  // Both requests taken in, the backup waiting behind the stream.
  while (log.messages().filter((msg) => msg === 'incoming request').length < 2) await sleep(10)
  await sleep(700)
  const free = await backup(app)
  t.equal(free.status, 200, 'the one place is free: the queued backup never took it')
  t.equal((await entries(free.body)).size, SESSIONS)
  t.notOk(log.messages().some((msg) => msg.startsWith('Backup cut')), 'nothing was made for it, so nothing is cut')
  socket.destroy()
  await sleep(100)
  t.equal((await backup(app)).status, 200, 'nor once its connection went')
})

t.test('a backup whose answer takes all it is given (app.inject) is never cut, however long it takes to make', async (t) => {
  const SESSIONS = 100
  const { app, log } = await bulkyApp(t, SESSIONS, { TASK_BACKUP_STALL_MS: 100 })
  for (let round = 0; round < 3; round++) {
    const whole = await backup(app)
    t.equal(whole.status, 200)
    t.equal((await entries(whole.body)).size, SESSIONS, `round ${round + 1}: whole`)
  }
  t.notOk(log.messages().some((msg) => msg.startsWith('Backup cut')), 'never cut')
})

t.test('a slow reader that keeps reading is never cut, however long the backup takes', async (t) => {
  const SESSIONS = 30
  const { app, log } = await bulkyApp(t, SESSIONS, { TASK_BACKUP_STALL_MS: 1000 })
  await app.listen({ port: 0, host: '127.0.0.1' })
  const { port } = app.server.address() as AddressInfo
  // Some 48 KB every 100 ms: the backup takes seconds, several times TASK_BACKUP_STALL_MS, but never stalls that long.
  const body = await new Promise<Buffer>((resolve, reject) => {
    const req = request({ host: '127.0.0.1', port, path: `${API}/backup` }, (res) => {
      const chunks: Buffer[] = []
      res.pause()
      const take = (): void => {
        let got = 0
        for (let chunk = res.read() as Buffer | null; chunk !== null; chunk = res.read() as Buffer | null) {
          chunks.push(chunk)
          got += chunk.length
          if (got >= 49_152) break
        }
        if (res.readableEnded) return
        setTimeout(take, 100)
      }
      res.once('end', () => { resolve(Buffer.concat(chunks)) })
      res.once('error', reject)
      take()
    })
    req.on('error', reject)
    req.end()
  })
  t.notOk(log.messages().some((msg) => msg.startsWith('Backup cut')), 'not cut')
  t.equal((await entries(body)).size, SESSIONS, 'the whole backup arrived')
})

t.test('HEAD /backup answers the headers without making a backup', async (t) => {
  const log = memoryLog()
  const app = await build(t, { logger: log.logger })
  t.equal((await post(app, '/create', { session_id: 'h', instructions: 'one' })).statusCode, 200)
  const res = await app.inject({ method: 'HEAD', url: `${API}/backup` })
  t.equal(res.statusCode, 200)
  t.match(res.headers['content-disposition'], /^attachment; filename="tasks_\d{8}_\d{6}\.tar\.gz"$/u)
  t.equal(res.rawPayload.length, 0)
  // A GET's length is unknown until the archive is made: a HEAD must not say 0 (an empty download).
  t.equal(res.headers['content-length'], undefined, 'no content-length')
  t.notOk(log.messages().some((msg) => msg.startsWith('Backup')), 'no backup was made')
})

t.test('a storage fault: before the first byte a plain 503; after it, an archive cut short that restore refuses', async (t) => {
  const dir = await tempDir(t, 'taskvault-backup-')
  await mkdir(join(dir, 'archive'), { mode: 0o700 })
  for (let i = 0; i < 40; i++) {
    await writeFile(join(dir, `s${i}.json`), storedSession(`s${i}`, ['Pending'], '2026-01-01T00:00:00.000Z', randomBytes(30_000).toString('base64')), { mode: 0o600 })
  }
  for (const id of ['aaa', 'zzz']) await writeFile(join(dir, 'archive', `${id}.json`), storedSession(id, ['Completed'], '2026-01-01T00:00:00.000Z'), { mode: 0o600 })
  // Reads of one archived file fail with EIO (a failing disk), chosen per request below.
  let failing = ''
  const fs = {
    ...nodeFs,
    open: (async (path: string, ...rest: unknown[]) => {
      if (failing !== '' && path.endsWith(`/archive/${failing}`)) throw Object.assign(new Error('EIO'), { code: 'EIO' })
      return (nodeFs.open as (...args: unknown[]) => Promise<unknown>)(path, ...rest)
    }) as typeof nodeFs.open
  }
  const log = memoryLog()
  const app = await build(t, { dir, fs, logger: log.logger, config: { TASK_ARCHIVE_DAYS: 0 } })

  failing = 'aaa.json' // the first session of the walk
  const early = await backup(app)
  t.equal(early.status, 503, 'nothing sent yet: a plain error answer')
  t.equal(early.headers['content-type'], 'application/json; charset=utf-8')
  t.notOk('content-disposition' in early.headers, 'not offered as a download')
  t.match(JSON.parse(early.body.toString('utf8')), { code: 'STORAGE_UNAVAILABLE' })

  failing = 'zzz.json' // the last one: megabytes are on the wire by then
  await app.listen({ port: 0, host: '127.0.0.1' })
  const { port } = app.server.address() as AddressInfo
  const got = await new Promise<{ status: number, body: Buffer, complete: boolean }>((resolve, reject) => {
    request({ host: '127.0.0.1', port, path: `${API}/backup` }, (res) => {
      const chunks: Buffer[] = []
      res.on('data', (chunk: Buffer) => chunks.push(chunk))
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks), complete: res.complete }))
      res.on('error', () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks), complete: false }))
    }).on('error', reject).end()
  })
  t.equal(got.status, 200, 'the download had started')
  t.notOk(got.complete, 'the response is cut short')
  t.ok(got.body.length > 100_000, `after ${got.body.length} bytes`)
  t.ok(log.messages().includes('Backup cut short'), 'and the log says so')
  const file = join(await tempDir(t, 'taskvault-backup-'), 'cut.tar.gz')
  await writeFile(file, got.body)
  const restore = await taskvault(['restore', file, join(dir, '..', 'never')])
  t.equal(restore.code, 1, 'restore refuses the cut archive')
  t.match(restore.stderr, /truncated|damaged|not a gzip/u)
  t.same(await jsonFiles(join(dir, '..', 'never')), [], 'writing nothing')
})

t.test('GET /backup carries an archived session sealed under a key this server lacks as it is stored', async (t) => {
  const dir = await tempDir(t)
  const oldKey = `old:${randomBytes(32).toString('base64')}`
  let app = await build(t, { dir, config: { TASK_ENCRYPTION_KEYS: oldKey } })
  t.equal((await post(app, '/create', { session_id: 'finished', instructions: 'x' })).statusCode, 200)
  t.equal((await post(app, '/execute-all', { session_id: 'finished' })).statusCode, 200)
  t.same((await post(app, '/archive', { older_than_days: 0 })).json().archived_ids, ['finished'])
  await app.close()
  const [name] = await readdir(join(dir, 'archive'))
  const stored = await readFile(join(dir, 'archive', name as string))
  // The old key dropped after a rotation without `seal`: only this archived file still needs it.
  app = await build(t, { dir, config: { TASK_ENCRYPTION_KEYS: `new:${randomBytes(32).toString('base64')}` } })
  t.equal((await post(app, '/create', { session_id: 'live', instructions: 'y' })).statusCode, 200)
  const res = await backup(app)
  t.equal(res.status, 200, 'the backup is made')
  const files = await entries(res.body)
  t.same([...files.keys()].sort(), [`archive/${name as string}`, 'live.json'], 'every session in it')
  t.ok(files.get(`archive/${name as string}`)?.equals(stored), 'the archived file as it is stored, still sealed under the old key')
})

t.test('GET /backup carries archived files byte for byte, under the key that sealed them (or in clear), active ones under the active key', async (t) => {
  const dir = await tempDir(t)
  const oldKey = `old:${randomBytes(32).toString('base64')}`
  let app = await build(t, { dir })
  for (const id of ['plain', 'sealed']) {
    if (id === 'sealed') {
      await app.close()
      app = await build(t, { dir, config: { TASK_ENCRYPTION_KEYS: oldKey } })
    }
    t.equal((await post(app, '/create', { session_id: id, instructions: 'x' })).statusCode, 200)
    t.equal((await post(app, '/execute-all', { session_id: id })).statusCode, 200)
    t.same((await post(app, '/archive', { older_than_days: 0 })).json().archived_ids, [id])
  }
  t.equal((await post(app, '/create', { session_id: 'live', instructions: 'y' })).statusCode, 200)
  await app.close()
  const stored = new Map<string, Buffer>()
  for (const name of await readdir(join(dir, 'archive'))) stored.set(`archive/${name}`, await readFile(join(dir, 'archive', name)))
  // Rotated: 'new' seals, 'old' still opens.
  app = await build(t, { dir, config: { TASK_ENCRYPTION_KEYS: `new:${randomBytes(32).toString('base64')},${oldKey}` } })
  const res = await backup(app)
  t.equal(res.status, 200)
  const files = await entries(res.body)
  t.same([...files.keys()].sort(), [...stored.keys(), 'live.json'].sort(), 'every session in it')
  for (const [rel, data] of stored) t.ok(files.get(rel)?.equals(data), `${rel} byte for byte as stored`)
  t.equal(JSON.parse(files.get('live.json')?.toString('utf8') ?? '{}').sealed?.kid, 'new', 'the active session as the store writes it now: under the active key')
})

t.test('GET /backup during shutdown answers 503', async (t) => {
  const app = await build(t)
  void app.taskManager.beginShutdown()
  const res = await backup(app)
  t.equal(res.status, 503)
})

/** A folder `data/tasks` (in a fresh parent) with three sessions and one archived one, as the seed keeps it. */
async function seedFolder (t: TestContext): Promise<string> {
  const parent = await tempDir(t, 'taskvault-seed-')
  const dir = join(parent, 'data', 'tasks')
  await mkdir(join(dir, 'archive'), { recursive: true, mode: 0o700 })
  for (const [rel, id, statuses] of [['a.json', 'a', ['Completed', 'Pending']], ['b.json', 'b', ['Pending']], ['c-1.json', 'c-1', ['Failed']], ['archive/old.json', 'old', ['Completed']]] as const) {
    await writeFile(join(dir, rel), storedSession(id, [...statuses], '2026-01-01T00:00:00.000Z'), { mode: 0o600 })
  }
  return parent
}

t.test("the seed's own tar (tar -czf ... data/tasks/*.json, from the parent folder) restores", async (t) => {
  const parent = await seedFolder(t)
  await run('sh', ['-c', 'tar -czf seed.tar.gz data/tasks/*.json && tar -czf with-archive.tar.gz data/tasks/*.json data/tasks/archive/*.json && tar -czf whole.tar.gz data'], { cwd: parent })
  t.same((await run('tar', ['-tzf', join(parent, 'seed.tar.gz')])).stdout.trim().split('\n').sort(), ['data/tasks/a.json', 'data/tasks/b.json', 'data/tasks/c-1.json'], 'GNU tar names them data/tasks/<id>.json')

  const target = join(parent, 'restored')
  const seed = await taskvault(['restore', join(parent, 'seed.tar.gz'), target, '--json'])
  t.equal(seed.code, 0, seed.stderr)
  t.match(seed.json(), { restored: 3, conflicts: [] })
  t.same(await jsonFiles(target), ['a.json', 'b.json', 'c-1.json'])
  for (const name of ['a.json', 'b.json', 'c-1.json']) t.same(await readFile(join(target, name)), await readFile(join(parent, 'data/tasks', name)), `${name}: every byte`)

  const withArchive = join(parent, 'restored-2')
  const both = await taskvault(['restore', join(parent, 'with-archive.tar.gz'), withArchive, '--json'])
  t.equal(both.code, 0, both.stderr)
  t.same(await jsonFiles(withArchive), ['a.json', 'archive/old.json', 'b.json', 'c-1.json'], 'data/tasks/archive/ goes to archive/')
  const whole = join(parent, 'restored-3')
  const folders = await taskvault(['restore', join(parent, 'whole.tar.gz'), whole, '--json'])
  t.equal(folders.code, 0, `a tar of the whole tree, folder entries and all: ${folders.stderr}`)
  t.same(await jsonFiles(whole), ['a.json', 'archive/old.json', 'b.json', 'c-1.json'])
  const app = await build(t, { dir: whole, config: { TASK_ARCHIVE_DAYS: 0 } })
  t.match((await get(app, '/stats')).json(), { total_sessions: 3, archived_sessions: 1 }, 'the restored folder boots')
})

t.test('restore into a folder whose archive/ is a symlink refuses, reading nothing through it and writing nothing', async (t) => {
  const parent = await seedFolder(t)
  await run('sh', ['-c', 'tar -czf with-archive.tar.gz data/tasks/*.json data/tasks/archive/*.json'], { cwd: parent })
  // The same files outside the folder, behind the link: a restore reading through it would find them identical.
  const target = join(parent, 'target')
  const outside = join(parent, 'outside')
  await mkdir(target)
  await run('cp', ['-a', join(parent, 'data/tasks/archive'), outside])
  await symlink(outside, join(target, 'archive'))
  const refused = await taskvault(['restore', join(parent, 'with-archive.tar.gz'), target])
  t.equal(refused.code, 1, refused.stdout)
  t.match(refused.stderr, /archive is not a real folder \(a symlink\?\)/u)
  t.same(await jsonFiles(target), ['archive/old.json'], 'nothing was written (the link\'s target is listed through it here)')
  t.same((await readdir(target)).filter((name) => name.endsWith('.json')), [], 'no session restored')
})

t.test('a stray my notes.json beside the sessions, which the server never reads: backup ignores it and succeeds; the seed\'s tar, which takes it too, restores the sessions', async (t) => {
  const parent = await seedFolder(t)
  const dir = join(parent, 'data', 'tasks')
  await writeFile(join(dir, 'my notes.json'), '{"not": "a session"}')
  await writeFile(join(dir, 'archive', 'notes.v2.json'), 'not json either')
  const out = join(parent, 'b.tar.gz')
  const backed = await taskvault(['backup', dir, '--out', out, '--json'])
  t.equal(backed.code, 0, 'a file no session is named by fails nothing (a daily cron job stays green)')
  t.match(backed.json(), { active: 3, archived: 1, skipped: [], ignored: [{ file: 'archive/notes.v2.json', reason: /not named/u }, { file: 'my notes.json', reason: /not named <id>\.json/u }] })
  t.match((await taskvault(['backup', dir, '--out', out, '--force'])).stdout, /⚠️ ignored my notes\.json/u)
  t.equal((await taskvault(['backup', join(parent, 'nowhere'), '--out', join(parent, 'x.tar.gz')])).code, 1, 'a real failure still exits 1')

  await run('sh', ['-c', 'tar -czf seed.tar.gz data/tasks/*.json'], { cwd: parent })
  const target = join(parent, 'restored')
  const restored = await taskvault(['restore', join(parent, 'seed.tar.gz'), target, '--json'])
  t.equal(restored.code, 0, restored.stderr)
  t.match(restored.json(), { restored: 3, skipped: ['data/tasks/my notes.json'] })
  t.same(await jsonFiles(target), ['a.json', 'b.json', 'c-1.json'], 'the sessions, not the notes')
  await writeFile(join(parent, 'data', 'elsewhere.json'), '{}')
  await run('sh', ['-c', 'tar -czf other.tar.gz data/tasks/*.json data/elsewhere.json'], { cwd: parent })
  t.equal((await taskvault(['restore', join(parent, 'other.tar.gz'), join(parent, 'restored-2')])).code, 1, 'a file in another folder is still refused')
})

t.test('a tar of a whole storage folder restores; its marker, lock, temp files and corrupt/ are skipped and counted', async (t) => {
  const parent = await seedFolder(t)
  const dir = join(parent, 'data', 'tasks')
  // What a folder a server has used holds besides sessions: its marker, its lock (a live
  // server's), a temp file of a save cut short, in the folder and in archive/, and corrupt/.
  const own = ['.taskvault', '.taskvault.lock', '.a.4242.7.tmp', 'archive/.old.4242.8.tmp', 'corrupt/broken.json.1767225600000.4242.1']
  await mkdir(join(dir, 'corrupt'))
  await writeFile(join(dir, '.taskvault'), '{"format":1,"key_checks":{"old":"x"}}\n')
  // The lock is a symlink whose target names its holder, as the server makes it: past 100 bytes,
  // which GNU tar stores in a long-link entry of its own.
  await symlink('{"pid":4242,"host":"elsewhere","since":"2026-01-01T00:00:00.000Z","boot":"19c4054b-7853-420a-81c9-5b9888c5cdcb","pidNamespace":"pid:[4026531836]","start":"373041"}', join(dir, '.taskvault.lock'))
  await writeFile(join(dir, '.a.4242.7.tmp'), '{"half a')
  await writeFile(join(dir, 'archive/.old.4242.8.tmp'), '')
  await writeFile(join(dir, 'corrupt/broken.json.1767225600000.4242.1'), '{')
  await run('sh', ['-c', 'tar -czf inside.tar.gz -C data/tasks . && tar -czf folder.tar.gz data/tasks'], { cwd: parent })
  for (const [file, prefix] of [['inside.tar.gz', ''], ['folder.tar.gz', 'data/tasks/']] as const) {
    const target = join(parent, `restored-${file}`)
    const res = await taskvault(['restore', join(parent, file), target, '--json'])
    t.equal(res.code, 0, `${file}: ${res.stderr}`)
    t.match(res.json(), { restored: 4, conflicts: [] }, file)
    t.same([...res.json().skipped].sort(), own.map((rel) => `${prefix}${rel}`).sort(), `${file}: the folder's own files are skipped, each named`)
    t.same(await jsonFiles(target), ['a.json', 'archive/old.json', 'b.json', 'c-1.json'])
    t.same((await readdir(target)).sort(), ['.taskvault', 'a.json', 'archive', 'b.json', 'c-1.json'], `${file}: no lock, temp file or corrupt/ restored`)
    t.same(await readdir(join(target, 'archive')), ['old.json'])
    t.same(JSON.parse(await readFile(join(target, '.taskvault'), 'utf8')), { format: 1 }, 'the folder is marked by the restore, not with the backup\'s marker')
    const text = await taskvault(['restore', join(parent, file), join(parent, `again-${file}`)])
    t.match(text.stdout, /Skipped 5 files of the backed-up folder that hold no session \(its \.taskvault marker or lock, temp files, corrupt\/, \.json files not named like a session\)/u, `${file}: the output says how many and why`)
  }
  const app = await build(t, { dir: join(parent, 'restored-folder.tar.gz'), config: { TASK_ARCHIVE_DAYS: 0 } })
  t.match((await get(app, '/stats')).json(), { total_sessions: 3, archived_sessions: 1 }, 'the restored folder boots')
  // A storage folder with no session yet (a new deployment), tarred whole: nothing to restore, and the folder is marked.
  const fresh = join(parent, 'fresh', 'tasks')
  await mkdir(fresh, { recursive: true })
  await writeFile(join(fresh, '.taskvault'), '{"format":1}\n')
  await run('sh', ['-c', 'tar -czf empty.tar.gz fresh/tasks'], { cwd: parent })
  const empty = await taskvault(['restore', join(parent, 'empty.tar.gz'), join(parent, 'restored-empty'), '--json'])
  t.equal(empty.code, 0, empty.stderr)
  t.match(empty.json(), { restored: 0, conflicts: [], skipped: ['fresh/tasks/.taskvault'] })
  t.same(await readdir(join(parent, 'restored-empty')), ['.taskvault'], 'marked by the restore')
  // An editor's backup file beside the sessions: refused, naming it (not the folder's own entry).
  await writeFile(join(dir, 'a.json~'), '{}')
  await run('sh', ['-c', 'tar -czf stray.tar.gz data/tasks'], { cwd: parent })
  const stray = await taskvault(['restore', join(parent, 'stray.tar.gz'), join(parent, 'restored-stray')])
  t.equal(stray.code, 1)
  t.match(stray.stderr, /the backup holds data\/tasks\/a\.json~, which is not data\/tasks\/<id>\.json/u, 'the stray file named')
})

t.test('unsafe or foreign tars are still refused, and nothing is written', async (t) => {
  const parent = await seedFolder(t)
  const good = storedSession('x', ['Pending'], '2026-01-01T00:00:00.000Z')
  const make = async (file: string, names: string[]): Promise<string> => {
    const path = join(parent, file)
    await writeTarGz(names.map((name) => ({ name, data: Buffer.from(good.replaceAll('"x"', `"${/([^/]+)\.json$/u.exec(name)?.[1] ?? 'x'}"`)) })), createWriteStream(path))
    return path
  }
  await symlink('/etc/passwd', join(parent, 'data/tasks/link.json'))
  await run('sh', ['-c', 'tar -czf links.tar.gz data/tasks/*.json'], { cwd: parent })
  // An absolute path of this test's own (a fixed one like /tmp/x.json may exist on the machine already).
  const absolute = join(parent, 'outside', 'x.json')
  const cases: Array<[string, string, RegExp]> = [
    ['a symlink among the files (GNU tar)', join(parent, 'links.tar.gz'), /not a regular file/u],
    ['a .. path', await make('dots.tar.gz', ['data/tasks/a.json', 'data/tasks/../../evil.json']), /unsafe path/u],
    ['a leading ..', await make('up.tar.gz', ['../x.json']), /unsafe path/u],
    ['an absolute path', await make('abs.tar.gz', [absolute]), /unsafe path/u],
    ['two different folders', await make('mixed.tar.gz', ['data/tasks/a.json', 'other/b.json']), /not a taskvault backup/u],
    ['a file beside the sessions', await make('extra.tar.gz', ['data/tasks/a.json', 'data/tasks/notes.txt']), /not a taskvault backup/u],
    ['a deeper folder', await make('deep.tar.gz', ['data/tasks/a.json', 'data/tasks/sub/b.json']), /not a taskvault backup/u],
    // Only the server's own temp names are the folder's files; another *.tmp is not.
    ['a temp file not named as the server names them', await make('tmp.tar.gz', ['data/tasks/a.json', 'data/tasks/notes.tmp']), /not a taskvault backup/u],
    ['a marker outside the folder', await make('marker.tar.gz', ['data/tasks/a.json', 'data/.taskvault']), /not a taskvault backup/u]
  ]
  // Where an escaping entry could land; one that exists already (parent/.. may be the machine's /tmp) is left out.
  const outside = [join(parent, 'evil.json'), join(parent, 'x.json'), absolute, join(parent, '..', 'x.json'), join(parent, '..', 'evil.json')].filter((path) => !existsSync(path))
  for (const [what, file, reason] of cases) {
    const target = join(parent, `target-${what.replace(/\W+/gu, '-')}`)
    const res = await taskvault(['restore', file, target])
    t.equal(res.code, 1, `${what}: refused`)
    t.match(res.stderr, reason, `${what}: says why`)
    t.same(await jsonFiles(target), [], `${what}: nothing written`)
  }
  t.same(outside.filter((path) => existsSync(path)), [], 'nothing written outside either')
})

t.test('backup --out-dir names tasks_YYYYMMDD[_HHMMSS].tar.gz; --keep-days deletes only its own older backups', async (t) => {
  const parent = await seedFolder(t)
  const dir = join(parent, 'data/tasks')
  const out = join(parent, 'backups')
  await mkdir(out)
  const now = Date.now()
  const old = [backupFileName(new Date(now - 10 * DAY)), backupFileName(new Date(now - 30 * DAY), true)]
  const recent = backupFileName(new Date(now - 2 * DAY))
  // Foreign files: other names, a near miss, a folder and a link named like ours, all old.
  const foreign = ['notes.txt', 'tasks_important.tar.gz', `${old[0] as string}.bak`, 'tasks_20201399.tar.gz', 'other_20200101.tar.gz']
  for (const name of [...old, recent, ...foreign]) {
    await writeFile(join(out, name), 'x')
    await utimes(join(out, name), new Date(now - 60 * DAY), new Date(now - 60 * DAY))
  }
  const folderLike = backupFileName(new Date(now - 40 * DAY))
  await mkdir(join(out, folderLike))
  const linkLike = backupFileName(new Date(now - 50 * DAY))
  await symlink(join(out, 'notes.txt'), join(out, linkLike))

  const first = await taskvault(['backup', dir, '--out-dir', out, '--keep-days', '7', '--json'])
  t.equal(first.code, 0, first.stderr)
  const today = backupFileName(new Date())
  t.equal(first.json().out, join(out, today), `named ${today}`)
  t.same(first.json().deleted, [...old].sort(), 'its own backups older than 7 days are deleted')
  const second = await taskvault(['backup', dir, '--out-dir', out, '--keep-days', '7', '--json'])
  t.equal(second.code, 0, second.stderr)
  t.match(second.json().out, /\/tasks_\d{8}_\d{6}\.tar\.gz$/u, 'a second one the same day gets the time too')
  t.same(second.json().deleted, [])
  const left = (await readdir(out)).sort()
  for (const name of [today, recent, ...foreign, folderLike, linkLike]) t.ok(left.includes(name), `${name} stays`)
  for (const name of old) t.notOk(left.includes(name), `${name} is gone`)

  const restored = join(parent, 'restored')
  t.equal((await taskvault(['restore', join(out, today), restored])).code, 0, 'the named backup restores')
  t.same(await jsonFiles(restored), ['a.json', 'archive/old.json', 'b.json', 'c-1.json'])

  t.equal((await taskvault(['backup', dir, '--keep-days', '7', '--out', join(out, 'x.tar.gz')])).code, 2, '--keep-days needs --out-dir')
  t.equal((await taskvault(['backup', dir, '--out-dir', out, '--out', join(out, 'x.tar.gz')])).code, 2, 'not both --out and --out-dir')
  t.equal((await taskvault(['backup', dir, '--out-dir', out, '--keep-days', '0'])).code, 2, '--keep-days is at least 1')
})

t.test('backup --out-dir in a second that has a backup already writes a name of its own, which --keep-days knows', async (t) => {
  const parent = await seedFolder(t)
  const dir = join(parent, 'data/tasks')
  const out = join(parent, 'backups')
  await mkdir(out)
  // Today's name and this second's (and the next few, however slow the run) are taken, as by a
  // backup in the same second: the next one neither fails nor replaces them.
  const now = Date.now()
  const taken = [backupFileName(new Date(now)), ...Array.from({ length: 16 }, (_, s) => backupFileName(new Date(now + s * 1000), true))]
  for (const name of taken) await writeFile(join(out, name), 'an earlier backup')
  const old = backupFileName(new Date(now - 10 * DAY), true)
  const repeats = [old, old.replace('.tar.gz', '_2.tar.gz'), old.replace('.tar.gz', '_12.tar.gz')]
  const foreign = [old.replace('.tar.gz', '_x.tar.gz'), old.replace('.tar.gz', '_1.tar.gz'), old.replace('.tar.gz', '_02.tar.gz'), backupFileName(new Date(now - 10 * DAY)).replace('.tar.gz', '_2.tar.gz')]
  for (const name of [...repeats, ...foreign]) {
    await writeFile(join(out, name), 'x')
    await utimes(join(out, name), new Date(now - 60 * DAY), new Date(now - 60 * DAY))
  }
  const res = await taskvault(['backup', dir, '--out-dir', out, '--keep-days', '7', '--json'])
  t.equal(res.code, 0, res.stderr)
  const made = (res.json().out as string).slice(out.length + 1)
  t.match(made, /^tasks_\d{8}_\d{6}_2\.tar\.gz$/u, `a name of its own: ${made}`)
  for (const name of taken) t.equal(await readFile(join(out, name), 'utf8'), 'an earlier backup', `${name} is not replaced`)
  t.same(res.json().deleted, [...repeats].sort(), 'its own old backups are deleted, repeats in one second too')
  const left = await readdir(out)
  for (const name of foreign) t.ok(left.includes(name), `${name}, not a name it gives, stays`)
  const again = await taskvault(['backup', dir, '--out-dir', out, '--json'])
  t.match(again.json().out, /_[23]\.tar\.gz$/u, 'and the next one another')
  t.not(again.json().out, res.json().out)
  t.equal((await taskvault(['restore', res.json().out, join(parent, 'restored')])).code, 0, 'it restores')
})

t.test('a backup deletes the temp files its killed predecessors left, and no one else\'s', async (t) => {
  const parent = await seedFolder(t)
  const dir = join(parent, 'data/tasks')
  const out = join(parent, 'backups')
  await mkdir(out)
  const exited = spawn(process.execPath, ['-e', ''])
  await once(exited, 'exit')
  const dead = exited.pid as number
  const hourAgo = new Date(Date.now() - 3_600_000)
  const daily = backupFileName(new Date(Date.now() - DAY))
  const temp = (name: string, pid: number): string => `${name}.${pid}.${Date.now() * 1000}.tmp`
  const killed = [temp(daily, dead), temp(backupFileName(new Date(), true), dead), temp('b.tar.gz', dead)]
  const kept = [
    temp(daily.replace('.tar.gz', '.tgz'), dead), // not a name backup gives
    temp(daily, process.pid), // its writer runs
    temp('notes.txt', dead)
  ]
  // Its writer may run on another host, where the pid means nothing here: it was written just now.
  const fresh = `${daily}.${dead}.1.tmp`
  for (const name of [...killed, ...kept]) {
    await writeFile(join(out, name), 'part of a backup')
    await utimes(join(out, name), hourAgo, hourAgo)
  }
  await writeFile(join(out, fresh), 'being written')
  const byDir = await taskvault(['backup', dir, '--out-dir', out, '--json'])
  t.equal(byDir.code, 0, byDir.stderr)
  t.same(byDir.json().leftovers, killed.slice(0, 2).sort(), 'with --out-dir: the temps of its names whose writer is gone')
  let left = await readdir(out)
  for (const name of killed.slice(0, 2)) t.notOk(left.includes(name), `${name} is gone`)
  for (const name of [...kept, killed[2] as string]) t.ok(left.includes(name), `${name} stays`)
  t.ok(left.includes(fresh), 'a temp written to just now stays')

  const byFile = await taskvault(['backup', dir, '--out', join(out, 'b.tar.gz')])
  t.equal(byFile.code, 0, byFile.stderr)
  t.match(byFile.stdout, `Deleted 1 temp files left by killed backups: ${killed[2] as string}`, 'with --out: the temp of that name, said so')
  left = await readdir(out)
  t.notOk(left.includes(killed[2] as string))
  for (const name of kept) t.ok(left.includes(name), `${name} still stays`)
})

t.test('backup --out in a folder that does not exist says so, not which temp file it could not open', async (t) => {
  const parent = await seedFolder(t)
  const dir = join(parent, 'data/tasks')
  const missing = join(parent, 'no-such-folder')
  const res = await taskvault(['backup', dir, '--out', join(missing, 'b.tar.gz')])
  t.equal(res.code, 1)
  t.match(res.stderr, `the folder ${missing} does not exist`)
  t.notMatch(res.stderr, /ENOENT|\.tmp/u, 'no raw error naming the temp file')
  await writeFile(join(parent, 'a-file'), 'x')
  const notFolder = await taskvault(['backup', dir, '--out', join(parent, 'a-file', 'b.tar.gz')])
  t.equal(notFolder.code, 1)
  t.match(notFolder.stderr, `${join(parent, 'a-file')} is not a folder`)
  const onFolder = await taskvault(['backup', dir, '--out', parent, '--force'])
  t.equal(onFolder.code, 1)
  t.match(onFolder.stderr, `${parent} is a folder; give --out a file name`)
  t.notMatch(onFolder.stderr, /EISDIR|\.tmp/u)
  t.notOk(existsSync(missing), 'nothing created')
})

t.test('the backup CronJob\'s script, run as written against a real server, saves a backup that restores', async (t) => {
  const root = fileURLToPath(new URL('../../', import.meta.url))
  const docs = parseAllDocuments(await readFile(join(root, 'deploy/kubernetes/backup-cronjob.yaml'), 'utf8')).map((doc) => doc.toJS() as Record<string, any>)
  const cron = docs.find((doc) => doc.kind === 'CronJob')
  const pod = cron?.spec.jobTemplate.spec.template.spec
  const container = pod?.containers[0]
  t.match(cron?.spec, { schedule: '0 3 * * *', concurrencyPolicy: 'Forbid' })
  t.match(pod?.securityContext, { runAsNonRoot: true }, 'runs as non-root')
  t.same(container.env.find((e: { name: string }) => e.name === 'TASK_API_KEYS').valueFrom.secretKeyRef, { name: 'taskvault-api-keys', key: 'keys' }, 'the server\'s key Secret')
  t.ok(docs.some((doc) => doc.kind === 'PersistentVolumeClaim' && doc.metadata.name === pod.volumes[0].persistentVolumeClaim.claimName), 'its claim is in the file')
  const script = container.args[0] as string
  t.match(script, /http:\/\/taskvault\/api\/v1\/tasks\/backup/u, 'through the Service (port 80)')

  const work = await scratch(t, { prefix: 'taskvault-cron-' })
  const server = await work.start({ TASK_STORAGE_DIR: join(work.dir, 'tasks'), TASK_API_KEYS: 'k1,k2' })
  for (const id of ['one', 'two']) {
    const res = await fetch(`${server.base}${API}/create`, { method: 'POST', headers: { authorization: 'Bearer k2', 'content-type': 'application/json' }, body: JSON.stringify({ session_id: id, instructions: `do ${id}` }) })
    t.equal(res.status, 200)
  }
  const backups = join(work.dir, 'backups')
  await mkdir(backups)
  await writeFile(join(backups, 'tasks_20200101.tar.gz'), 'old')
  await utimes(join(backups, 'tasks_20200101.tar.gz'), new Date(Date.now() - 10 * DAY), new Date(Date.now() - 10 * DAY))
  await writeFile(join(backups, 'keep.txt'), 'mine')
  await utimes(join(backups, 'keep.txt'), new Date(Date.now() - 10 * DAY), new Date(Date.now() - 10 * DAY))
  const local = script.replaceAll('http://taskvault/', `${server.base}/`).replaceAll('/backups', backups)
  const ok = await run('sh', ['-c', local], { env: { PATH: process.env.PATH ?? '/usr/bin:/bin', TASK_API_KEYS: 'k1,k2' } })
  t.match(ok.stdout, /^wrote .*tasks_\d{8}_\d{6}\.tar\.gz \(\d+ bytes\)/u)
  const left = (await readdir(backups)).sort()
  const made = left.filter((name) => /^tasks_\d{8}_\d{6}\.tar\.gz$/u.test(name))
  t.equal(made.length, 1, 'one backup, named tasks_YYYYMMDD_HHMMSS.tar.gz')
  t.notOk(left.includes('tasks_20200101.tar.gz'), 'backups older than 7 days are deleted')
  t.ok(left.includes('keep.txt'), 'other files stay')
  t.notOk(left.some((name) => name.endsWith('.part')), 'no partial file left')
  const restored = join(work.dir, 'restored')
  t.equal((await taskvault(['restore', join(backups, made[0] as string), restored])).code, 0, 'it restores')
  t.same(await jsonFiles(restored), ['one.json', 'two.json'])

  const refused = await run('sh', ['-c', local], { env: { PATH: process.env.PATH ?? '/usr/bin:/bin', TASK_API_KEYS: 'wrong' } }).then(() => null, (err: Error & { code: number }) => err)
  t.ok(refused !== null && refused.code !== 0, 'a refused key fails the job')
  t.equal((await readdir(backups)).filter((name) => name.endsWith('.tar.gz')).length, 1, 'and saves nothing')
})

t.test('the backup CronJob reads a key Secret made from a file (a trailing newline) as the server does', async (t) => {
  const docs = await documents('deploy/kubernetes/backup-cronjob.yaml')
  const script = docs.find((doc) => doc.kind === 'CronJob')?.spec.jobTemplate.spec.template.spec.containers[0].args[0] as string
  const work = await scratch(t, { prefix: 'taskvault-cron-key-' })
  // kubectl create secret generic taskvault-api-keys --from-file=keys=./keyfile: the file's newline is in the value.
  const secret = 'k1\n'
  const server = await work.start({ TASK_STORAGE_DIR: join(work.dir, 'tasks'), TASK_API_KEYS: secret })
  const created = await fetch(`${server.base}${API}/create`, { method: 'POST', headers: { authorization: 'Bearer k1', 'content-type': 'application/json' }, body: JSON.stringify({ session_id: 'one', instructions: 'do one' }) })
  t.equal(created.status, 200, 'the server takes the key trimmed')
  const backups = join(work.dir, 'backups')
  await mkdir(backups)
  const local = script.replaceAll('http://taskvault/', `${server.base}/`).replaceAll('/backups', backups)
  // The same key with a blank entry and spaces around it: the server would read k1 from it too.
  for (const keys of [secret, ' , k1 ,\n']) {
    const job = await run('sh', ['-c', local], { env: { PATH: process.env.PATH ?? '/usr/bin:/bin', TASK_API_KEYS: keys } }).then((out) => out, (err: Error & { stderr?: string }) => ({ stdout: '', stderr: err.stderr ?? err.message }))
    t.match(job.stdout, /^wrote .*tasks_\d{8}_\d{6}\.tar\.gz \(\d+ bytes\)/u, `TASK_API_KEYS=${JSON.stringify(keys)}: ${job.stderr}`)
  }
  const made = (await readdir(backups)).filter((name) => /^tasks_\d{8}_\d{6}\.tar\.gz$/u.test(name))
  t.ok(made.length > 0, 'a backup is saved')
  const restored = join(work.dir, 'restored')
  t.equal((await taskvault(['restore', join(backups, made[0] as string), restored])).code, 0, 'it restores')
  t.same(await jsonFiles(restored), ['one.json'])
})

t.test('a backup pipelined behind another on one connection runs once that one is sent: both answered at TASK_BACKUP_MAX_CLIENTS=1', async (t) => {
  const { app } = await bulkyApp(t, 20, { TASK_BACKUP_MAX_CLIENTS: 1 })
  await app.listen({ port: 0, host: '127.0.0.1' })
  const socket = connect((app.server.address() as AddressInfo).port, '127.0.0.1')
  t.teardown(() => { socket.destroy() })
  let received = ''
  socket.setEncoding('latin1').on('data', (chunk: string) => { received += chunk })
  await once(socket, 'connect')
  socket.write(`GET ${API}/backup HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\nGET ${API}/backup HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n`)
  await once(socket, 'close')
  t.same([...received.matchAll(/HTTP\/1\.1 (\d{3})/gu)].map((m) => Number(m[1])), [200, 200], 'the second is not refused as busy')
})
