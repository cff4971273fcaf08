/**
 * Real-process tests: the compiled server (dist/server.js) is spawned as a child process
 * with an explicit environment, in its own temp folder as cwd, and driven over HTTP.
 * They cover what in-process tests cannot: SIGKILL at arbitrary moments, SIGTERM and the
 * exit code, boot failures, `.env` loading and restore at startup.
 */
import { spawn, spawnSync } from 'node:child_process'
import { dirname } from 'node:path'
import { fileURLToPath } from 'node:url'
import http from 'node:http'
import { mkdir, readFile, readdir, realpath, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import t from 'tap'
import { markAsTaskvault } from './helper.js'
import { CLI } from './cli-run.js'
import { daysAgo, storedSession } from './session-fixtures.js'
import { baseEnv, call, describe, EXIT_TIMEOUT_MS, exitWithin, freePort, logMessages, scratch, type ServerProcess, type TaskView } from './server-process.js'

const API = '/api/v1/tasks'

// ---------------------------------------------------------------------------------------
// In-file helpers (spawning, scratch folders and HTTP: ./server-process.ts)
// ---------------------------------------------------------------------------------------

async function listSession (server: ServerProcess, sessionId: string): Promise<TaskView[]> {
  const res = await call(server, 'GET', `${API}/list?session_id=${sessionId}`)
  if (res.status !== 200) throw new Error(`list ${sessionId}: ${res.status} ${JSON.stringify(res.body)}`)
  return res.body.tasks as TaskView[]
}

function statuses (tasks: TaskView[]): Array<[string, string]> {
  return tasks.map((task) => [task.instruction, task.status])
}

// ---------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------

t.test('the seed crash scenario: SIGKILL right after an execute, restart, resume', async (t) => {
  const { dir, start } = await scratch(t)
  const env = { TASK_STORAGE_DIR: join(dir, 'tasks') }

  const first = await start(env)
  const created = await call(first, 'POST', `${API}/create`, { session_id: 'important_work', instructions: '1. Task A\n2. Task B\n3. Task C' })
  t.equal(created.status, 200, 'create answers 200')
  t.same(created.body.tasks.map((task: TaskView) => task.instruction), ['Task A', 'Task B', 'Task C'])
  const executed = await call(first, 'POST', `${API}/execute`, { session_id: 'important_work' })
  t.equal(executed.status, 200, 'execute answers 200')
  t.match(executed.body, { instruction: 'Task A', status: 'Completed' }, 'Task A completed in the response')
  first.child.kill('SIGKILL')
  const exit = await first.exited
  t.equal(exit.signal, 'SIGKILL', 'the first server died of SIGKILL')

  const second = await start(env)
  const ready = await call(second, 'GET', '/ready')
  t.same([ready.status, ready.body], [200, { status: 'ready', sessions: 1 }], '/ready is 200 with the restored session')
  t.same(statuses(await listSession(second, 'important_work')),
    [['Task A', 'Completed'], ['Task B', 'Pending'], ['Task C', 'Pending']], 'Task A Completed, B and C Pending')
  const next = await call(second, 'POST', `${API}/execute`, { session_id: 'important_work' })
  t.equal(next.status, 200)
  t.match(next.body, { instruction: 'Task B', status: 'Completed', result: 'Task B' }, 'execute resumes with Task B')
  t.ok(logMessages(second.stdout()).includes('Restored 1 task sessions from disk'),
    'stdout logs "Restored 1 task sessions from disk"', { stdout: second.stdout().slice(0, 2000) })
})

t.test('kill -9 loop: acknowledged writes survive SIGKILL at random moments', async (t) => {
  const { dir, start } = await scratch(t)
  const storage = join(dir, 'tasks')
  // warn: keeps the per-request log lines out of the hot loop; the restore log is not needed here.
  const env = { TASK_STORAGE_DIR: storage, LOG_LEVEL: 'warn' }
  const SESSIONS = ['loop-a', 'loop-b', 'loop-c', 'loop-d']
  const WORKERS = 6
  const ROUNDS = 5
  const BUDGET_MS = 15_000

  const ackedCreates: Array<{ session: string, ids: string[], instructions: string[] }> = []
  const ackedExecutes: Array<{ session: string, id: string, instruction: string }> = []
  const unexpected: string[] = []

  /** Everything acknowledged so far is on the restarted server, and the folder is clean. */
  async function verify (server: ServerProcess, label: string): Promise<void> {
    const missing: string[] = []
    const notCompleted: string[] = []
    const duplicated: string[] = []
    const bySession = new Map<string, Map<string, TaskView>>()
    for (const session of new Set([...ackedCreates, ...ackedExecutes].map((ack) => ack.session))) {
      const res = await call(server, 'GET', `${API}/list?session_id=${session}`)
      if (res.status !== 200) missing.push(`session ${session}: list answered ${res.status}`)
      const tasks = res.status === 200 ? res.body.tasks as TaskView[] : []
      const ids = tasks.map((task) => task.id)
      if (new Set(ids).size !== ids.length) duplicated.push(`${session}: ${ids.join(',')}`)
      bySession.set(session, new Map(tasks.map((task) => [task.id, task])))
    }
    for (const create of ackedCreates) {
      create.ids.forEach((id, i) => {
        const task = bySession.get(create.session)?.get(id)
        if (task?.instruction !== create.instructions[i]) missing.push(`${create.session}/${id} (${create.instructions[i]})`)
      })
    }
    for (const exec of ackedExecutes) {
      const task = bySession.get(exec.session)?.get(exec.id)
      if (task?.status !== 'Completed' || task.instruction !== exec.instruction) {
        notCompleted.push(`${exec.session}/${exec.id}: ${task?.status ?? 'absent'}`)
      }
    }
    t.same(missing, [], `${label}: every acknowledged create's tasks are present`)
    t.same(notCompleted, [], `${label}: every acknowledged execute's task is Completed`)
    t.same(duplicated, [], `${label}: no task id is duplicated within a session`)

    const entries = await readdir(storage, { withFileTypes: true })
    const temps = entries.filter((e) => e.name.endsWith('.tmp')).map((e) => e.name)
    t.same(temps, [], `${label}: no .tmp file remains after the restart`)
    t.notOk(entries.some((e) => e.name === 'corrupt'), `${label}: nothing was set aside as corrupt`)
    const unreadable: string[] = []
    for (const entry of entries.filter((e) => e.isFile() && e.name.endsWith('.json'))) {
      try {
        const file = JSON.parse(await readFile(join(storage, entry.name), 'utf8')) as { session: { tasks: Array<{ id: string }> } }
        const ids = file.session.tasks.map((task) => task.id)
        if (new Set(ids).size !== ids.length) unreadable.push(`${entry.name}: duplicate task ids`)
      } catch (err) {
        unreadable.push(`${entry.name}: ${(err as Error).message}`)
      }
    }
    t.same(unreadable, [], `${label}: every *.json file parses`)
    const stats = await call(server, 'GET', `${API}/stats`)
    t.equal(stats.body.storage.failed_loads, 0, `${label}: no session file failed to load`)
  }

  const started = Date.now()
  let rounds = 0
  while (rounds < ROUNDS && (rounds < 2 || Date.now() - started < BUDGET_MS)) {
    const round = rounds++
    const server = await start(env)
    if (round > 0) await verify(server, `after kill ${round}`)

    let killed = false
    let ackedThisRound = 0
    let executedThisRound = 0
    let counter = 0
    const worker = async (w: number): Promise<void> => {
      while (!killed) {
        const session = SESSIONS[Math.floor(Math.random() * SESSIONS.length)] as string
        const n = counter++
        try {
          if (Math.random() < 0.5) {
            const instructions = [`r${round} w${w} n${n} first`, `r${round} w${w} n${n} second`]
            const res = await call(server, 'POST', `${API}/create`, { session_id: session, tasks: instructions.map((instruction) => ({ instruction })) })
            if (res.status >= 200 && res.status < 300) {
              ackedCreates.push({ session, ids: res.body.task_ids as string[], instructions })
              ackedThisRound++
            } else if (!killed) {
              unexpected.push(`create ${session}: ${res.status} ${JSON.stringify(res.body)}`)
            }
          } else {
            const res = await call(server, 'POST', `${API}/execute`, { session_id: session })
            if (res.status >= 200 && res.status < 300) {
              ackedExecutes.push({ session, id: res.body.task_id as string, instruction: res.body.instruction as string })
              ackedThisRound++
              executedThisRound++
            } else if (!killed && res.status !== 404 && res.status !== 409) {
              // 404: session not created yet; 409: already executing or nothing pending.
              unexpected.push(`execute ${session}: ${res.status} ${JSON.stringify(res.body)}`)
            }
          }
        } catch (err) {
          // A request cut off by the kill is not acknowledged; anything else is a real error.
          if (!killed) throw err
        }
      }
    }
    const workers = Array.from({ length: WORKERS }, (_, w) => worker(w))
    // Let some work of both kinds be acknowledged (on a loaded host creates outpace executes),
    // then kill at a random moment with requests in flight.
    const ackDeadline = Date.now() + 20_000
    while ((ackedThisRound < 4 || executedThisRound === 0) && Date.now() < ackDeadline && server.exit() === null) await sleep(5)
    await sleep(Math.floor(Math.random() * 120))
    t.equal(server.exit(), null, `round ${round}: the server was still running when killed`)
    server.child.kill('SIGKILL')
    killed = true
    const exit = await server.exited
    t.equal(exit.signal, 'SIGKILL', `round ${round}: killed by SIGKILL`)
    // A kill may or may not land inside a save; this stands for one that did, so the clean-up
    // at restart is checked every round. Same name shape as the store's temp files.
    await writeFile(join(storage, `.${SESSIONS[round % SESSIONS.length]}.999999.${round}.tmp`), '{"session_id": "trunc')
    await Promise.all(workers)
    t.ok(ackedThisRound > 0, `round ${round}: some requests were acknowledged (${ackedThisRound})`)
  }

  const last = await start(env)
  await verify(last, `after kill ${rounds}`)
  t.ok(ackedExecutes.length > 0, `some executes were acknowledged (${ackedExecutes.length})`)
  t.same(unexpected, [], 'no request failed for another reason than the kill')
  t.comment(`${rounds} rounds, ${ackedCreates.length} creates and ${ackedExecutes.length} executes acknowledged in ${Date.now() - started} ms`)
})

for (const autoSave of [true, false]) {
  t.test(`graceful shutdown (TASK_AUTO_SAVE=${autoSave}): SIGTERM exits 0 and keeps the data`, async (t) => {
    const { dir, start } = await scratch(t)
    const storage = join(dir, 'tasks')
    const env = { TASK_STORAGE_DIR: storage, TASK_SHUTDOWN_GRACE_MS: '200', TASK_AUTO_SAVE: String(autoSave) }

    const first = await start(env)
    const created = await call(first, 'POST', `${API}/create`, { session_id: 'graceful', instructions: '1. Task A\n2. Task B\n3. Task C' })
    t.equal(created.status, 200)
    const executed = await call(first, 'POST', `${API}/execute`, { session_id: 'graceful' })
    t.match(executed.body, { instruction: 'Task A', status: 'Completed' })
    const others: Array<{ session: string, ids: string[] }> = []
    for (let i = 0; i < 3; i++) {
      const res = await call(first, 'POST', `${API}/create`, { session_id: `other-${i}`, tasks: [{ instruction: `other ${i}` }] })
      t.equal(res.status, 200)
      others.push({ session: `other-${i}`, ids: res.body.task_ids as string[] })
    }
    if (!autoSave) {
      // Documented: with auto-save off, files are written only at graceful shutdown, so
      // what follows proves the shutdown itself saves them.
      const files = (await readdir(storage)).filter((name) => name.endsWith('.json'))
      t.same(files, [], 'auto-save off: nothing written before shutdown')
    }

    const exit = await first.stop('SIGTERM')
    t.same(exit, { code: 0, signal: null }, 'SIGTERM: exit code 0', { output: describe(first) })
    t.ok(logMessages(first.stdout()).includes('shutting down'), 'logged the shutdown')

    const second = await start(env)
    t.same(statuses(await listSession(second, 'graceful')),
      [['Task A', 'Completed'], ['Task B', 'Pending'], ['Task C', 'Pending']], 'the session is intact after restart')
    for (const { session, ids } of others) {
      t.same((await listSession(second, session)).map((task) => task.id), ids, `${session} is intact after restart`)
    }
    const temps = (await readdir(storage)).filter((name) => name.endsWith('.tmp'))
    t.same(temps, [], 'no temp files left behind')
  })
}

t.test('a SIGTERM sent to `npm start` reaches the server, which shuts down: no orphan keeps the port and the lock', async (t) => {
  const { dir } = await scratch(t)
  const port = await freePort()
  const root = dirname(dirname(dirname(fileURLToPath(import.meta.url))))
  // --ignore-scripts: the start script alone (its prestart build would rewrite dist/ under the other tests).
  const npm = spawn('npm', ['start', '--ignore-scripts', '--silent'], { cwd: root, env: { ...baseEnv({ PORT: String(port), TASK_STORAGE_DIR: join(dir, 'tasks') }), HOME: process.env.HOME ?? '/root' }, stdio: ['ignore', 'pipe', 'pipe'] })
  let out = ''
  npm.stdout.on('data', (chunk: Buffer) => { out += chunk.toString() })
  const exited = new Promise<void>((resolve) => npm.once('exit', () => resolve()))
  t.teardown(() => { npm.kill('SIGKILL') })
  const deadline = Date.now() + 30_000
  while (!out.includes('Server listening') && Date.now() < deadline && npm.exitCode === null) await sleep(50)
  t.match(out, /Server listening/, 'started', { output: out })
  npm.kill('SIGTERM')
  await exited
  t.match(out, /"signal":"SIGTERM".*shutting down/, 'the server got the signal')
  t.notOk((await readdir(join(dir, 'tasks'))).includes('.taskvault.lock'), 'and released its lock')
  const refused = await fetch(`http://127.0.0.1:${port}/health`).then(() => false, () => true)
  t.ok(refused, 'nothing listens on its port any more')
})

t.test('Ctrl-C under `npm start` (the terminal\'s SIGINT to npm and the server, then npm\'s copy) is one graceful shutdown, every time; a later second SIGINT still exits at once', async (t) => {
  const { dir, start } = await scratch(t)
  const root = dirname(dirname(dirname(fileURLToPath(import.meta.url))))
  for (let round = 1; round <= 3; round++) {
    const port = await freePort()
    const storage = join(dir, `tasks-${round}`)
    // Its own process group, as a terminal's foreground job: Ctrl-C signals the whole group.
    const npm = spawn('npm', ['start', '--ignore-scripts', '--silent'], { cwd: root, detached: true, env: { ...baseEnv({ PORT: String(port), TASK_STORAGE_DIR: storage }), HOME: process.env.HOME ?? '/root' }, stdio: ['ignore', 'pipe', 'pipe'] })
    let out = ''
    npm.stdout.on('data', (chunk: Buffer) => { out += chunk.toString() })
    const exited = new Promise<void>((resolve) => npm.once('close', () => resolve()))
    t.teardown(() => {
      try {
        process.kill(-(npm.pid as number), 'SIGKILL')
      } catch {
        // The group is gone: everything in it exited.
      }
    })
    const deadline = Date.now() + 30_000
    while (!out.includes('Server listening') && Date.now() < deadline && npm.exitCode === null) await sleep(50)
    t.match(out, /Server listening/, `round ${round}: started`, { output: out })
    process.kill(-(npm.pid as number), 'SIGINT')
    await exited
    const lines = logMessages(out)
    t.ok(lines.includes('shutting down') && !lines.some((line) => /^second /u.test(line)), `round ${round}: the server shut down gracefully, once`, { output: out })
    t.notOk((await readdir(storage)).includes('.taskvault.lock'), `round ${round}: and released its lock`)
  }
  // A person pressing Ctrl-C again while shutdown waits (a run past its grace) stops waiting.
  const server = await start({ TASK_SHUTDOWN_GRACE_MS: '20000', TASK_AGENTS: JSON.stringify({ default: { kind: 'command', argv: ['sleep', '30'] } }) })
  t.equal((await call(server, 'POST', `${API}/create`, { session_id: 'slow', instructions: 'wait' })).status, 200)
  t.equal((await call(server, 'POST', `${API}/execute-all`, { session_id: 'slow', wait: false })).status, 202)
  const deadline = Date.now() + 10_000
  while (statuses(await listSession(server, 'slow'))[0]?.[1] !== 'InProgress' && Date.now() < deadline) await sleep(50)
  server.child.kill('SIGINT')
  server.child.kill('SIGINT')
  t.ok(await server.waitForLine((line) => line.includes('shutting down'), 5_000), 'the first SIGINT begins shutdown, its copy is the same stop')
  await sleep(600)
  t.equal(server.exit(), null, 'still waiting on the run')
  server.child.kill('SIGINT')
  t.same(await server.stop(null, 5_000), { code: 1, signal: null }, 'a SIGINT later exits 1 at once')
  t.ok(logMessages(server.stdout()).includes('second SIGINT, exiting'))
})

t.test('SIGTERM while starting exits 0: during the wait for a database, and during a restore (which then ends, and the lock is released; no archive pass runs; past a grace shorter than the restore, the lock is released too)', async (t) => {
  const { spawnRaw, dir } = await scratch(t)
  const waiting = spawnRaw(baseEnv({ PORT: String(await freePort()), TASK_STORE: 'postgres', DATABASE_URL: 'postgres://127.0.0.1:1/none', TASK_DB_CONNECT_TIMEOUT_MS: '60000' }))
  t.ok(await waiting.waitForLine((line) => line.includes('The database cannot be reached yet'), 20_000), 'waiting for the database', { output: describe(waiting) })
  waiting.child.kill('SIGTERM')
  t.same(await exitWithin(waiting, 10_000), { code: 0, signal: null }, 'exit 0 at once, not after TASK_DB_CONNECT_TIMEOUT_MS', { output: describe(waiting) })
  t.match(waiting.stderr(), /SIGTERM while starting; exiting/)

  // Enough sessions that the restore is still going when the signal comes.
  const data = join(dir, 'big')
  await mkdir(data, { recursive: true })
  await markAsTaskvault(data)
  for (let i = 0; i < 20_000; i += 500) {
    await Promise.all(Array.from({ length: 500 }, async (_, j) => writeFile(join(data, `s${i + j}.json`), storedSession(`s${i + j}`, ['Pending', 'Pending'], daysAgo(1)))))
  }
  // Finished past TASK_ARCHIVE_DAYS: the first archive pass would move them.
  for (let i = 0; i < 50; i++) await writeFile(join(data, `old${i}.json`), storedSession(`old${i}`, ['Completed'], daysAgo(40)))
  // A background run the last shutdown interrupted: resumed, it would claim its task (attempts + 1) only to stop at once.
  const run = { ...JSON.parse(storedSession('run', ['Pending'], daysAgo(1))), background_run: { started_at: daysAgo(1) } }
  await writeFile(join(data, 'run.json'), JSON.stringify(run))
  const restoring = spawnRaw(baseEnv({ PORT: String(await freePort()), TASK_STORAGE_DIR: data, TASK_SHUTDOWN_GRACE_MS: '60000' }))
  t.ok(await restoring.waitForLine((line) => line.includes('Agents by task type'), 20_000), 'starting', { output: describe(restoring) })
  restoring.child.kill('SIGTERM')
  t.same(await exitWithin(restoring, 60_000), { code: 0, signal: null }, 'exit 0', { output: describe(restoring) })
  t.ok(logMessages(restoring.stdout()).includes('Shutting down while starting'), 'and says why')
  t.notOk((await readdir(data)).includes('.taskvault.lock'), 'the storage lock is released')
  t.equal((await readdir(data)).filter((name) => name.startsWith('old')).length, 50, 'no archive pass ran on the way out: the finished sessions are where they were')
  t.notOk(logMessages(restoring.stdout()).includes('Resuming background run'), 'no background run resumed on the way out')
  t.same(JSON.parse(await readFile(join(data, 'run.json'), 'utf8')), run, 'its session is as it was: no task claimed, attempts not counted, the run kept to resume at the next start')

  // A grace shorter than the restore: the process ends before its store could close, and its lock goes with it
  // (left behind, a start on another host would wait TASK_LOCK_STALE_MS).
  const hurried = spawnRaw(baseEnv({ PORT: String(await freePort()), TASK_STORAGE_DIR: data, TASK_SHUTDOWN_GRACE_MS: '0' }))
  t.ok(await hurried.waitForLine((line) => line.includes('Agents by task type'), 20_000), 'starting again', { output: describe(hurried) })
  hurried.child.kill('SIGTERM')
  t.same(await exitWithin(hurried, 60_000), { code: 0, signal: null }, 'exit 0 within the grace', { output: describe(hurried) })
  t.notOk((await readdir(data)).includes('.taskvault.lock'), 'the storage lock is released all the same')
})

t.test('SIGTERM with a request in flight (TASK_AUTO_SAVE=false) still exits 0 and keeps acknowledged work', async (t) => {
  const { dir, start } = await scratch(t)
  const storage = join(dir, 'tasks')
  // The grace gives this process time to see the shutdown begin and send the rest of the body
  // on a loaded host; the exit stays prompt, as the request then completes.
  const env = { TASK_STORAGE_DIR: storage, TASK_SHUTDOWN_GRACE_MS: '5000', TASK_AUTO_SAVE: 'false' }
  const agent = new http.Agent({ keepAlive: true })
  t.teardown(() => agent.destroy())

  const first = await start(env)
  const acked = await call(first, 'POST', `${API}/create`, { session_id: 'acked', tasks: [{ instruction: 'acknowledged before SIGTERM' }] })
  t.equal(acked.status, 200, 'a create is acknowledged before SIGTERM')

  // A keep-alive client (like every real one) is uploading a body when SIGTERM arrives.
  let inFlight: http.ClientRequest | undefined
  const body = JSON.stringify({ session_id: 'inflight', tasks: [{ instruction: 'sent across SIGTERM' }] })
  const response = new Promise<{ status: number, text: string }>((resolve, reject) => {
    const req = http.request({
      host: '127.0.0.1',
      port: first.port,
      method: 'POST',
      path: `${API}/create`,
      agent,
      headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) }
    }, (res) => {
      let text = ''
      res.setEncoding('utf8').on('data', (chunk: string) => { text += chunk }).on('end', () => resolve({ status: res.statusCode ?? 0, text }))
    })
    req.on('error', reject)
    req.write(body.slice(0, 10))
    inFlight = req
  })
  // The server has the request (it logs "incoming request" once headers are parsed) and is
  // waiting for the rest of the body when the signal arrives.
  const deadline = Date.now() + EXIT_TIMEOUT_MS
  const creates = (): number => first.stdout().split('\n').filter((line) => line.includes('"incoming request"') && line.includes(`"url":"${API}/create"`)).length
  while (creates() < 2 && Date.now() < deadline) await sleep(10)
  t.equal(creates(), 2, 'the server has started on the in-flight request')
  first.child.kill('SIGTERM')
  while (!logMessages(first.stdout()).includes('shutting down') && first.exit() === null && Date.now() < deadline) await sleep(10)
  inFlight?.end(body.slice(10))
  const answer = await response.catch((err: Error) => ({ status: 0, text: err.message }))
  t.ok(answer.status === 200 || answer.status === 503, `the in-flight request is answered 200 or 503 (got ${answer.status} ${answer.text.slice(0, 120)})`)

  // No second signal: one is "exit 1 now".
  const exit = await first.stop(null)
  // A keep-alive socket of a request in flight at SIGTERM must neither hold up the exit nor
  // keep the flush of unsaved sessions from running.
  t.same(exit, { code: 0, signal: null }, 'SIGTERM: exit code 0', { output: describe(first) })

  const second = await start(env)
  const present = await call(second, 'GET', `${API}/list?session_id=acked`)
  t.equal(present.status, 200, 'the create acknowledged before SIGTERM survives')
  if (answer.status === 200) {
    const inflight = await call(second, 'GET', `${API}/list?session_id=inflight`)
    t.equal(inflight.status, 200, 'the in-flight create, acknowledged, survives')
  }
})

t.test('a bad setting exits 1 and names the variable', async (t) => {
  const { dir, spawnRaw } = await scratch(t)
  const blocker = join(dir, 'a-file')
  await writeFile(blocker, 'not a folder')
  const cases: Array<{ name: string, env: Record<string, string>, mention: string }> = [
    { name: 'PORT=notanumber', env: { PORT: 'notanumber', TASK_STORAGE_DIR: join(dir, 'tasks') }, mention: 'PORT' },
    { name: 'TASK_RESTORE_CONCURRENCY=0', env: { PORT: String(await freePort()), TASK_STORAGE_DIR: join(dir, 'tasks'), TASK_RESTORE_CONCURRENCY: '0' }, mention: 'TASK_RESTORE_CONCURRENCY' },
    { name: 'unusable TASK_STORAGE_DIR', env: { PORT: String(await freePort()), TASK_STORAGE_DIR: join(blocker, 'tasks') }, mention: join(blocker, 'tasks') }
  ]
  for (const c of cases) {
    const server = spawnRaw(baseEnv(c.env))
    const exit = await exitWithin(server, EXIT_TIMEOUT_MS)
    t.same(exit, { code: 1, signal: null }, `${c.name}: exit code 1`, { output: describe(server) })
    t.ok(server.stderr().includes(c.mention), `${c.name}: stderr names ${c.mention}`, { stderr: server.stderr() })
    t.notOk(server.stdout().includes('Server listening'), `${c.name}: never listened`)
    t.match(server.stderr(), /^taskvault: cannot start: /m, `${c.name}: the boot error is one clear line`)
  }
})

t.test('a .env file in the cwd is read, and the environment wins over it', async (t) => {
  const { dir, start } = await scratch(t)
  const cwd = await realpath(dir)
  // PORT in .env is invalid: the server only boots if the real environment's PORT wins.
  await writeFile(join(cwd, '.env'), 'TASK_STORAGE_DIR=from-dotenv\nPORT=notanumber\n')
  const env = baseEnv()
  const server = await start(env, cwd)
  const created = await call(server, 'POST', `${API}/create`, { session_id: 'dotenv', instructions: 'one task' })
  t.equal(created.status, 200)
  const stats = await call(server, 'GET', `${API}/stats`)
  t.equal(stats.body.storage.dir, join(cwd, 'from-dotenv'), 'storage folder comes from .env, relative to the cwd')
  const stored = JSON.parse(await readFile(join(cwd, 'from-dotenv', 'dotenv.json'), 'utf8')) as { session_id: string }
  t.equal(stored.session_id, 'dotenv', 'the session file is written in the .env folder')
  const defaultFolder = await readdir(join(cwd, 'data')).then(() => true, () => false)
  t.notOk(defaultFolder, 'the default data/tasks folder was not used')
})

t.test('a .env line the parser would drop (no "=") stops the boot naming its line, never its text; a value quoted across lines is read', async (t) => {
  const { dir, spawnRaw, start } = await scratch(t)
  const cwd = await realpath(dir)
  await writeFile(join(cwd, '.env'), '# taskvault\nTASK_STORE postgres\nTASK_ARCHIVE_DAYS=5\nhunter2secret\n')
  const server = spawnRaw(baseEnv({ PORT: String(await freePort()) }), cwd)
  const exit = await exitWithin(server, EXIT_TIMEOUT_MS)
  t.same(exit, { code: 1, signal: null }, 'exit 1', { output: describe(server) })
  t.equal(server.stderr().trim(), 'taskvault: cannot start: .env lines 2, 4: not NAME=value, a comment or an empty line, so the parser drops or misreads them and a setting would not apply; fix or remove them')
  t.notMatch(server.stdout() + server.stderr(), /hunter2secret|postgres/u, 'the lines themselves are never shown')
  const cli = spawnSync(process.execPath, [CLI, 'stats', '--json'], { cwd, env: baseEnv(), encoding: 'utf8' })
  t.equal(cli.status, 2, 'the command-line tool refuses it too (a bad setting)')
  t.match(JSON.parse(cli.stdout), { error: { code: 'USAGE', message: /^bad setting \.env lines 2, 4: not NAME=value/u } })
  t.notMatch(cli.stdout + cli.stderr, /hunter2secret/u)
  // A quoted value may span lines, whose text holds no "=".
  await writeFile(join(cwd, '.env'), ['TASK_STORAGE_DIR=quoted', "TASK_AGENTS='{", '  "default": {"kind": "echo"}', "}'", ''].join('\n'))
  const booted = await start(baseEnv(), cwd)
  t.equal((await call(booted, 'GET', `${API}/stats`)).body.storage.dir, join(cwd, 'quoted'))
})

t.test('an InProgress task found on disk at startup is reset to Pending', async (t) => {
  const { dir, start } = await scratch(t)
  const storage = join(dir, 'tasks')
  await mkdir(storage, { recursive: true })
  // The seed's session file format, as an operator or an older version would have left it:
  // no `error` field, interrupted while running Task B.
  const seedFile = {
    session_id: 'interrupted',
    created_at: '2025-01-15T10:30:00Z',
    updated_at: '2025-01-15T10:31:00Z',
    session: {
      session_id: 'interrupted',
      tasks: [
        { id: 'task_1_1736937000', instruction: 'Task A', task_type: 'General', status: 'Completed', result: 'done A', confidence: 0.9, created_at: '2025-01-15T10:30:00Z', started_at: '2025-01-15T10:30:10Z', completed_at: '2025-01-15T10:30:20Z', attempts: 1 },
        { id: 'task_2_1736937000', instruction: 'Task B', task_type: 'General', status: 'InProgress', result: null, confidence: null, created_at: '2025-01-15T10:30:00Z', started_at: '2025-01-15T10:31:00Z', completed_at: null, attempts: 1 },
        { id: 'task_3_1736937000', instruction: 'Task C', task_type: 'General', status: 'Pending', result: null, confidence: null, created_at: '2025-01-15T10:30:00Z', started_at: null, completed_at: null, attempts: 0 }
      ],
      current_index: 1
    }
  }
  const path = join(storage, 'interrupted.json')
  await writeFile(path, JSON.stringify(seedFile, null, 2))

  const server = await start({ TASK_STORAGE_DIR: storage })
  const tasks = await listSession(server, 'interrupted')
  t.same(tasks.map((task) => [task.instruction, task.status, task.attempts]),
    [['Task A', 'Completed', 1], ['Task B', 'Pending', 1], ['Task C', 'Pending', 0]], 'Task B is Pending with attempts 1')
  t.equal(tasks[0]?.result, 'done A', 'the completed task keeps its result')
  const onDisk = JSON.parse(await readFile(path, 'utf8')) as typeof seedFile
  t.same(onDisk.session.tasks.map((task) => task.status), ['Completed', 'Pending', 'Pending'], 'the file on disk now says Pending')
  t.equal(onDisk.session.tasks[1]?.attempts, 1, 'attempts on disk unchanged by the reset')

  const next = await call(server, 'POST', `${API}/execute`, { session_id: 'interrupted' })
  t.match(next.body, { instruction: 'Task B', status: 'Completed' }, 'the interrupted task runs again next')
  const after = await listSession(server, 'interrupted')
  t.equal(after[1]?.attempts, 2, 'the re-run counts as attempt 2')
})
