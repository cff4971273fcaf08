/**
 * The command agent with real child processes (node scripts in test/fixtures/agents/): stdin,
 * environment, output cap, exit codes, and killing the whole process group.
 */
import { execFile } from 'node:child_process'
import { existsSync } from 'node:fs'
import { readFile, realpath, rm, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { promisify } from 'node:util'
import t from 'tap'
import { alive, createTasks, fixture, recordCalls, storedTasks, waitFor } from './agents-fakes.js'
import { build, heldBytes, post, tempDir } from './helper.js'

const run = promisify(execFile)

t.test('stdin is the instruction; TASK_ID, TASK_TYPE, SESSION_ID, TASK_ATTEMPT, TASK_RETRIES, spec env and cwd; no shell; the server\'s secrets withheld', async (t) => {
  const dir = await tempDir(t)
  const work = await realpath(await tempDir(t, 'taskvault-cwd-'))
  const app = await build(t, {
    dir,
    agents: { default: { kind: 'command', argv: fixture('report.js', '$HOME; echo injected', '*'), cwd: work, env: { EXTRA: 'from spec' } } },
    env: {
      PATH: process.env.PATH,
      INHERITED: 'from server env',
      TASK_API_KEYS: 'must-not-leak',
      TASK_ENCRYPTION_KEYS: 'k:must-not-leak',
      DATABASE_URL: 'postgres://tv:must-not-leak@db/tv',
      // The PostgreSQL client's own: a password kept out of DATABASE_URL is here.
      PGPASSWORD: 'must-not-leak',
      PGPASSFILE: '/secrets/pgpass',
      PGSSLKEY: '/secrets/client.key',
      PGSSLPASSWORD: 'must-not-leak'
    }
  })
  const instruction = 'Explain the "plan"\nline two — ünïcode $PATH `id`'
  const [id] = await createTasks(app, 'cmd-env', [{ instruction, task_type: 'Analysis' }])
  const res = await post(app, '/execute', { session_id: 'cmd-env' })
  t.equal(res.statusCode, 200)
  const body = res.json()
  t.match(body, { task_id: id, status: 'Completed', confidence: null })
  const seen = JSON.parse(body.result)
  t.equal(seen.stdin, instruction, 'the instruction, byte for byte, on stdin')
  t.same(seen.argv, ['$HOME; echo injected', '*'], 'arguments passed literally: no shell')
  t.same(seen.env, {
    TASK_ID: id,
    TASK_TYPE: 'Analysis',
    SESSION_ID: 'cmd-env',
    TASK_ATTEMPT: '1',
    TASK_RETRIES: '0',
    EXTRA: 'from spec',
    INHERITED: 'from server env',
    TASK_API_KEYS: null,
    TASK_ENCRYPTION_KEYS: null,
    DATABASE_URL: null,
    PGPASSWORD: null,
    PGPASSFILE: null,
    PGSSLKEY: null,
    PGSSLPASSWORD: null
  })
  t.equal(seen.cwd, work, 'runs in the configured cwd')
  t.match((await storedTasks(dir, 'cmd-env'))[0], { status: 'Completed', attempts: 1, result: body.result })
})

t.test('output over max_output_bytes is cut and flagged result_truncated; exactly the cap is not', async (t) => {
  const dir = await tempDir(t)
  const app = await build(t, {
    dir,
    agents: {
      Coding: { kind: 'command', argv: fixture('output.js', '5000'), max_output_bytes: 1000 },
      Analysis: { kind: 'command', argv: fixture('output.js', '1000'), max_output_bytes: 1000 },
      Research: { kind: 'command', argv: fixture('output.js', '3001', 'é'), max_output_bytes: 1001 },
      default: { kind: 'command', argv: fixture('output.js', String(1024 * 1024 + 10)) }
    }
  })
  await createTasks(app, 'big', [
    { instruction: 'a', task_type: 'Coding' },
    { instruction: 'b', task_type: 'Analysis' },
    { instruction: 'c', task_type: 'Research' },
    { instruction: 'd', task_type: 'General' }
  ])
  const res = await post(app, '/execute-all', { session_id: 'big' })
  t.equal(res.statusCode, 200)
  const [over, exact, multibyte, defaultCap] = res.json().results
  t.match(over, { status: 'Completed', result_truncated: true })
  t.equal(over.result, 'x'.repeat(1000), 'cut at max_output_bytes')
  t.match(exact, { status: 'Completed', result: 'x'.repeat(1000) })
  t.notOk('result_truncated' in exact, 'output of exactly the cap is whole')
  t.match(multibyte, { status: 'Completed', result_truncated: true })
  t.ok(Buffer.byteLength(multibyte.result) <= 1001 && /^é+$/.test(multibyte.result), 'cut on a character boundary, within the cap')
  t.match(defaultCap, { status: 'Completed', result_truncated: true })
  t.equal(defaultCap.result.length, 1024 * 1024, 'the default cap is 1 MiB')
  const stored = await storedTasks(dir, 'big')
  t.same(stored.map((task) => task.result_truncated === true), [true, false, true, true], 'the flag is on disk')
})

t.test('output written a byte at a time costs about its size in memory while it comes, not an object per byte', async (t) => {
  const dir = await tempDir(t)
  const BYTES = 40_000
  const [marker, go] = [join(dir, 'written'), join(dir, 'go')]
  const app = await build(t, { agents: { default: { kind: 'command', argv: fixture('drip.js', String(BYTES), marker, go), timeout_ms: 120_000 } } })
  await createTasks(app, 'drip', [{ instruction: 'x' }])
  const before = heldBytes()
  const executing = post(app, '/execute', { session_id: 'drip' })
  await waitFor('the program to write all its output', () => existsSync(marker), 60_000)
  await new Promise((resolve) => setTimeout(resolve, 100))
  const during = heldBytes() - before
  await writeFile(go, '')
  const res = await executing
  t.match(res.json(), { status: 'Completed' })
  t.equal(res.json().result.length, BYTES)
  t.ok(during < 3 * 1024 * 1024, `${BYTES} bytes in up to as many reads held ${(during / 1024).toFixed(0)} KB while the output came (a chunk object each would be megabytes)`)
})

t.test('output that is not UTF-8 but within max_output_bytes is whole, not cut', async (t) => {
  // 8 bytes, two of them Latin-1 (each decodes to a 3-byte U+FFFD), under a 9-byte cap.
  const app = await build(t, { agents: { default: { kind: 'command', argv: fixture('output.js', '8', 'hex:636166e9206f6ce9'), max_output_bytes: 9 } } })
  await createTasks(app, 'latin1', [{ instruction: 'a' }])
  const res = (await post(app, '/execute', { session_id: 'latin1' })).json()
  t.match(res, { status: 'Completed', result: 'caf\ufffd ol\ufffd' }, 'every byte there, the stray ones as U+FFFD')
  t.notOk('result_truncated' in res, 'not flagged as cut')
})

t.test('a non-zero exit fails the task with the exit code and the tail of stderr; not retried', async (t) => {
  const dir = await tempDir(t)
  const app = await build(t, { dir, agents: { default: { kind: 'command', argv: fixture('fail.js', '3', '400'), max_attempts: 3, backoff_ms: 10 } } })
  const calls = recordCalls(app)
  await createTasks(app, 'crash', [{ instruction: 'x' }])
  const res = await post(app, '/execute', { session_id: 'crash' })
  const { status, error, result } = res.json()
  t.equal(status, 'Failed')
  t.equal(result, null, 'stdout of a failed run is not a result')
  t.match(error, /exited with code 3/)
  t.match(error, /stderr line 400\nfinal words$/, 'ends with the end of stderr')
  t.notOk(error.includes('stderr line 1\n'), 'only the tail')
  t.ok(Buffer.byteLength(error) < 1200, `bounded (${Buffer.byteLength(error)} bytes)`)
  t.equal(calls.length, 1, 'exit 3 is not retried')
  t.match((await storedTasks(dir, 'crash'))[0], { status: 'Failed', attempts: 1 })
})

t.test('exit 75 (EX_TEMPFAIL) is transient: retried up to max_attempts', async (t) => {
  const dir = await tempDir(t)
  const app = await build(t, {
    dir,
    agents: {
      Coding: { kind: 'command', argv: fixture('flaky.js', '3'), max_attempts: 3, backoff_ms: 10 },
      default: { kind: 'command', argv: fixture('flaky.js', '9'), max_attempts: 2, backoff_ms: 10 }
    }
  })
  await createTasks(app, 'temp', [{ instruction: 'a', task_type: 'Coding' }, { instruction: 'b', task_type: 'General' }])
  const res = await post(app, '/execute-all', { session_id: 'temp' })
  const [recovered, gaveUp] = res.json().results
  t.match(recovered, { status: 'Completed', result: 'ok on attempt 3' })
  t.match(gaveUp, { status: 'Failed', error: /exited with code 75: busy on attempt 2/ })
  const stored = await storedTasks(dir, 'temp')
  t.same(stored.map((task) => task.attempts), [3, 2])
})

t.test('a missing program or folder stops the boot, naming the field; a program gone since fails the task', async (t) => {
  const refused = async (spec: object): Promise<string> => build(t, { agents: { default: { kind: 'command', ...spec } as never } }).then(() => 'started', (err: Error) => err.message)
  t.match(await refused({ argv: ['/nonexistent/agent-binary'] }), /TASK_AGENTS\.default\.argv: \/nonexistent\/agent-binary is not an executable file/u)
  t.match(await refused({ argv: ['no-such-agent-program'] }), /TASK_AGENTS\.default\.argv: no-such-agent-program is not an executable file on PATH/u)
  t.match(await refused({ argv: ['sh', '-c', 'true'], cwd: '/nonexistent/folder' }), /TASK_AGENTS\.default\.cwd: \/nonexistent\/folder is not a folder/u)
  // A NUL byte, which spawn would refuse at every task, quoting the value into each task's error.
  t.match(await refused({ argv: ['cat', 'a\u0000b'] }), /^TASK_AGENTS\.default\.argv\.1: holds a NUL byte, which no program can be given$/u)
  t.match(await refused({ argv: ['cat'], env: { X: 'sec\u0000ret' } }), /^TASK_AGENTS\.default\.env\.X: holds a NUL byte, which no program can be given$/u)
  t.match(await refused({ argv: ['cat'], cwd: '/tmp\u0000' }), /^TASK_AGENTS\.default\.cwd: holds a NUL byte/u)
  const scratch = await tempDir(t, 'taskvault-gone-')
  const program = join(scratch, 'agent.sh')
  await writeFile(program, '#!/bin/sh\ncat\n', { mode: 0o755 })
  const app = await build(t, { agents: { default: { kind: 'command', argv: [program] } } })
  await rm(program)
  await createTasks(app, 'nostart', [{ instruction: 'x' }])
  const res = await post(app, '/execute', { session_id: 'nostart' })
  t.match(res.json(), { status: 'Failed', error: /could not start: ENOENT/ })
  // An environment larger than the kernel takes (E2BIG): spawn throws rather than emits; the task says so.
  const big = await build(t, { agents: { default: { kind: 'command', argv: ['cat'], env: { HUGE: 'x'.repeat(3 * 1024 * 1024) } } } })
  await createTasks(big, 'toobig', [{ instruction: 'x' }])
  t.match((await post(big, '/execute', { session_id: 'toobig' })).json(), { status: 'Failed', error: /^command cat could not start: E2BIG$/ })
})

t.test('the process\'s exit listener that kills running programs is there only while a call runs (no listener per app: many apps in one process warn of none)', async (t) => {
  const apps = await Promise.all(Array.from({ length: 12 }, async () => build(t, { agents: { default: { kind: 'command', argv: ['/bin/sh', '-c', 'sleep 0.5; cat'] } } })))
  const baseline = process.listenerCount('exit')
  const app = apps[0]!
  await createTasks(app, 'listened', [{ instruction: 'x' }])
  const running = post(app, '/execute', { session_id: 'listened' })
  await waitFor('the call to run', () => process.listenerCount('exit') === baseline + 1, 5000)
  t.match((await running).json(), { status: 'Completed', result: 'x' })
  t.equal(process.listenerCount('exit'), baseline, 'gone once the call ended')
})

t.test('timeout kills the whole process group: the grandchild it started is gone too', async (t) => {
  const dir = await tempDir(t)
  const scratch = await tempDir(t, 'taskvault-pids-')
  const pidfile = join(scratch, 'pids.json')
  const app = await build(t, { dir, agents: { default: { kind: 'command', argv: fixture('grandchild.js', pidfile), timeout_ms: 2000 } } })
  const calls = recordCalls(app)
  // eslint-disable-next-line prefer-const -- the teardown reads it before it is set
  let pids: { self: number, grandchild: number } | undefined
  // Whatever happens, no process of this test outlives it.
  t.teardown(() => {
    for (const pid of [pids?.self, pids?.grandchild]) {
      if (pid !== undefined && alive(pid)) process.kill(pid, 'SIGKILL')
    }
  })
  await createTasks(app, 'group', [{ instruction: 'start something that never ends' }])
  const running = post(app, '/execute', { session_id: 'group' })
  pids = await waitFor('the fixture to write its pids', async () => readFile(pidfile, 'utf8').then((text) => JSON.parse(text), () => undefined))
  t.ok(alive(pids!.grandchild), 'the grandchild runs while the call runs')
  const res = await running
  t.match(res.json(), { status: 'Failed', error: /timed out after 2000 ms/ })
  t.equal(calls[0]?.outcome, 'timeout')
  await waitFor('the agent process to die', () => !alive(pids!.self), 5000)
  await waitFor('the grandchild to die', () => !alive(pids!.grandchild), 5000)
  t.pass('the agent and its grandchild are gone')
})

t.test('cancel kills the process group of the running command', async (t) => {
  const scratch = await tempDir(t, 'taskvault-pids-')
  const pidfile = join(scratch, 'pids.json')
  const app = await build(t, { agents: { default: { kind: 'command', argv: fixture('grandchild.js', pidfile) } } })
  // eslint-disable-next-line prefer-const -- the teardown reads it before it is set
  let pids: { self: number, grandchild: number } | undefined
  t.teardown(() => {
    for (const pid of [pids?.self, pids?.grandchild]) {
      if (pid !== undefined && alive(pid)) process.kill(pid, 'SIGKILL')
    }
  })
  const [id] = await createTasks(app, 'cancel-cmd', [{ instruction: 'x' }])
  const running = post(app, '/execute', { session_id: 'cancel-cmd' })
  pids = await waitFor('the fixture to write its pids', async () => readFile(pidfile, 'utf8').then((text) => JSON.parse(text), () => undefined))
  const cancelled = await post(app, '/cancel', { session_id: 'cancel-cmd' })
  t.match(cancelled.json(), { session_id: 'cancel-cmd', cancelled_task_id: id })
  t.match((await running).json(), { task_id: id, status: 'Failed', error: 'cancelled' })
  await waitFor('the grandchild to die', () => !alive(pids!.grandchild) && !alive(pids!.self), 5000)
  t.pass('the command and its grandchild are gone')
})

t.test('a program that cannot start for want of file descriptors (EMFILE) fails its task after its attempts; the process lives on, and the next call runs', async (t) => {
  const dir = await tempDir(t)
  // In a process of its own, whose file descriptors it uses up to the last few.
  const script = `
    import { closeSync, openSync } from 'node:fs'
    const { buildApp } = await import(process.env.APP_URL)
    const app = await buildApp({ readEnvironment: false, logger: false, config: { TASK_STORAGE_DIR: process.env.DIR },
      agents: { default: { kind: 'command', argv: ['/bin/echo', 'hi'], max_attempts: 2, backoff_ms: 10 } } })
    await app.ready()
    const post = async (path, body) => { const res = await app.inject({ method: 'POST', url: '/api/v1/tasks' + path, payload: body }); return [res.statusCode, res.json()] }
    await post('/create', { session_id: 's', instructions: '1. a\\n2. b' })
    const held = []
    try { for (;;) held.push(openSync('/dev/null', 'r')) } catch (err) { if (err.code !== 'EMFILE') throw err }
    // Room for a save (a temp file and its folder), none for three pipes.
    for (let i = 0; i < 3; i++) closeSync(held.pop())
    const starved = await post('/execute', { session_id: 's' })
    for (const fd of held) closeSync(fd)
    const fed = await post('/execute', { session_id: 's' })
    await app.close()
    console.log('RESULT ' + JSON.stringify({ starved, fed }))
  `
  // Without tap's preload (NODE_OPTIONS), which a bare node child needs not.
  const { NODE_OPTIONS: _preload, ...inherited } = process.env
  const env = { ...inherited, APP_URL: new URL('../app.js', import.meta.url).href, DIR: dir }
  const { stdout } = await run('bash', ['-c', 'ulimit -n 256 && exec "$0" --input-type=module -e "$1"', process.execPath, script], { env })
  const line = stdout.split('\n').find((text) => text.startsWith('RESULT '))
  t.ok(line !== undefined, 'the process lived to report')
  const { starved, fed } = JSON.parse((line ?? 'RESULT {}').slice(7))
  t.match(starved, [200, { status: 'Failed', error: /could not start: EMFILE/ }], 'the starved call fails its task, saying why')
  t.match(fed, [200, { status: 'Completed', result: 'hi\n' }], 'with descriptors back, the next task runs')
  t.same((await storedTasks(dir, 's')).map((task) => [task.status, task.attempts]), [['Failed', 2], ['Completed', 1]], 'EMFILE is worth another attempt: both were made')
})

t.test('the tail of stderr in a failed task\'s error starts on a whole character, never U+FFFD', async (t) => {
  const dir = await tempDir(t)
  // 2,100 bytes of three-byte characters: the last 1,000 bytes start inside one.
  const app = await build(t, { dir, agents: { default: { kind: 'command', argv: [process.execPath, '-e', "process.stderr.write('€'.repeat(700)); process.exit(3)"] } } })
  await createTasks(app, 'euro', [{ instruction: 'x' }])
  const { status, error } = (await post(app, '/execute', { session_id: 'euro' })).json()
  t.equal(status, 'Failed')
  t.notOk(error.includes('\ufffd'), 'no replacement character')
  t.match(error, /exited with code 3: (€){333}$/u, 'the whole characters of the last 1,000 bytes')
})
