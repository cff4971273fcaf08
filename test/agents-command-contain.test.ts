/**
 * The command agent's end and containment, with real processes: the program's exit ends the
 * call (a background child holding stdout does not), and what it leaves is killed, a `setsid`
 * grandchild too when the host gives each call a cgroup (root on Linux with cgroup2). Without
 * one, the documented fallback holds: the startup log says what can escape, and it does.
 */
import { spawn } from 'node:child_process'
import { lstat, mkdir, readdir, readFile, rmdir, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import t from 'tap'
import { probeCgroups } from '../services/runner/agents/cgroup.js'
import { alive, createTasks, recordCalls, waitFor } from './agents-fakes.js'
import { build, memoryLog, post, tempDir, type TestContext } from './helper.js'

/** Whether this host gives each call a cgroup; the tests below expect what it does either way. */
const contained = (await probeCgroups()).cgroups !== null
t.comment(contained ? 'per-call cgroups available: setsid grandchildren must die' : 'no per-call cgroup here: setsid grandchildren are expected to escape')

/** A pid the script wrote to `file` (atomically, with mv); killed at teardown if still alive. */
async function pidFrom (t: TestContext, file: string): Promise<number> {
  const pid = await waitFor(`a pid in ${file}`, async () => readFile(file, 'utf8').then((text) => Number(text.trim()) || undefined, () => undefined))
  t.teardown(() => { if (alive(pid)) process.kill(pid, 'SIGKILL') })
  return pid
}

/** `sh -c`: start `sleep <s>` in its own session (setsid), write its pid to $0, then run `rest`. */
function setsidScript (seconds: number, pidfile: string, rest: string): string[] {
  return ['/bin/sh', '-c', `setsid sleep ${seconds} </dev/null >/dev/null 2>&1 & echo $! > "$0.tmp" && mv "$0.tmp" "$0"; ${rest}`, pidfile]
}

t.test('a background child holding stdout does not hold the call: the result comes within the drain, the child is killed', async (t) => {
  const scratch = await tempDir(t, 'taskvault-pids-')
  const pidfile = join(scratch, 'bg.pid')
  const app = await build(t, {
    agents: { default: { kind: 'command', argv: ['/bin/sh', '-c', 'echo result; sleep 300 & echo $! > "$0.tmp" && mv "$0.tmp" "$0"', pidfile], timeout_ms: 10_000 } }
  })
  const calls = recordCalls(app)
  await createTasks(app, 'drain', [{ instruction: 'x' }])
  const started = Date.now()
  const res = await post(app, '/execute', { session_id: 'drain' })
  const ms = Date.now() - started
  t.same([res.json().status, res.json().result], ['Completed', 'result\n'])
  t.equal(calls[0]?.outcome, 'ok')
  t.ok(ms < 3000, `done in ${ms} ms: the exit plus the 200 ms drain, not the 10 s timeout`)
  const background = await pidFrom(t, pidfile)
  await waitFor('the background child to be killed', () => !alive(background), 5000)
  t.pass('the background child, left in the process group, is gone')
})

t.test('TASK_COMMAND_DRAIN_MS and drain_ms: output written after the exit is kept within the drain', async (t) => {
  // The program exits at once; its background child writes 300 ms later on the same stdout.
  const argv = ['/bin/sh', '-c', 'echo first; (sleep 0.3; echo late) &']
  const app = await build(t, {
    config: { TASK_COMMAND_DRAIN_MS: 2000 },
    agents: { Coding: { kind: 'command', argv }, default: { kind: 'command', argv, drain_ms: 0 } }
  })
  await createTasks(app, 'late', [{ instruction: 'a', task_type: 'Coding' }, { instruction: 'b', task_type: 'General' }])
  const [long, none] = (await post(app, '/execute-all', { session_id: 'late' })).json().results
  t.same([long.status, long.result], ['Completed', 'first\nlate\n'], 'TASK_COMMAND_DRAIN_MS=2000 waits for the late line')
  t.same([none.status, none.result], ['Completed', 'first\n'], 'drain_ms: 0 ends the call at the exit, with what it wrote before')
})

for (const ending of ['timeout', 'cancel', 'exit', 'shutdown'] as const) {
  t.test(`a setsid grandchild is killed on ${ending} when the call has a cgroup (else: it escapes, as documented)`, async (t) => {
    const scratch = await tempDir(t, 'taskvault-pids-')
    const pidfile = join(scratch, 'setsid.pid')
    const log = memoryLog()
    const app = await build(t, {
      logger: log.logger,
      config: { TASK_SHUTDOWN_GRACE_MS: 100 },
      agents: { default: { kind: 'command', argv: setsidScript(301, pidfile, ending === 'exit' ? 'echo done' : 'sleep 300'), timeout_ms: ending === 'timeout' ? 1500 : 60_000 } }
    })
    const startup = log.lines().find((line) => /^Command agents/.test(line.msg ?? ''))
    t.match(startup?.msg, contained ? /run in a cgroup per call/ : /process group only.*setsid/, 'one startup line says what is contained')
    const session = `setsid-${ending}`
    const [id] = await createTasks(app, session, [{ instruction: 'x' }])
    const running = post(app, '/execute', { session_id: session })
    const grandchild = await pidFrom(t, pidfile)
    // After a normal exit it may be killed already.
    if (ending !== 'exit') t.ok(alive(grandchild), 'the grandchild runs')
    if (ending === 'cancel') t.match((await post(app, '/cancel', { session_id: session })).json(), { cancelled_task_id: id })
    if (ending === 'shutdown') {
      await app.close()
      t.match((await running).json(), { statusCode: 503 }, 'the call was aborted by shutdown after the grace period')
    } else {
      const expected = { timeout: { status: 'Failed', error: /timed out after 1500 ms/ }, cancel: { status: 'Failed', error: 'cancelled' }, exit: { status: 'Completed', result: 'done\n' } }[ending]
      t.match((await running).json(), expected)
    }
    if (contained) {
      await waitFor('the setsid grandchild to die', () => !alive(grandchild), 5000)
      t.pass('the setsid grandchild is gone')
    } else {
      await new Promise((resolve) => setTimeout(resolve, 300))
      t.ok(alive(grandchild), 'without a cgroup it escapes, as the startup line and the README say')
    }
  })
}

t.test('TASK_COMMAND_CGROUP=off: the process group only, said at startup; the drain still ends the call', async (t) => {
  const scratch = await tempDir(t, 'taskvault-pids-')
  const pidfile = join(scratch, 'setsid.pid')
  const log = memoryLog()
  const app = await build(t, {
    logger: log.logger,
    config: { TASK_COMMAND_CGROUP: 'off' },
    agents: { default: { kind: 'command', argv: setsidScript(302, pidfile, 'echo result; sleep 300 &'), timeout_ms: 10_000 } }
  })
  const warning = log.lines().find((line) => /^Command agents/.test(line.msg ?? ''))
  t.match(warning, { level: 40, reason: 'TASK_COMMAND_CGROUP=off', msg: /process group only.*setsid/ })
  await createTasks(app, 'off', [{ instruction: 'x' }])
  const started = Date.now()
  t.match((await post(app, '/execute', { session_id: 'off' })).json(), { status: 'Completed', result: 'result\n' })
  t.ok(Date.now() - started < 3000, 'ended by the exit and the drain')
  const grandchild = await pidFrom(t, pidfile)
  t.ok(alive(grandchild), 'the setsid grandchild escapes without a cgroup (killed by this test)')
})

t.test('no command agent: no probe, no containment line', async (t) => {
  const log = memoryLog()
  await build(t, { logger: log.logger, agents: { default: { kind: 'echo' } } })
  t.notOk(log.lines().some((line) => /^Command agents/.test(line.msg ?? '')))
})

t.test('per-call cgroups are removed when their calls end', { skip: contained ? false : 'no per-call cgroup on this host' }, async (t) => {
  const { cgroups } = await probeCgroups()
  const app = await build(t, { agents: { default: { kind: 'command', argv: ['/bin/sh', '-c', 'echo ok; sleep 300 &'], timeout_ms: 10_000 } } })
  const mine = async (): Promise<string[]> => readdir(cgroups!.parent).then((names) => names.filter((name) => name.startsWith(`taskvault-${process.pid}-`)))
  await createTasks(app, 'tidy', [{ instruction: 'a' }, { instruction: 'b' }])
  t.match((await post(app, '/execute-all', { session_id: 'tidy' })).json().results, [{ status: 'Completed' }, { status: 'Completed' }])
  t.same(await mine(), [], 'no cgroup of this process is left')
})

t.test('a shutdown past its grace period removes the cgroups of the calls it abandoned before it ends', { skip: contained ? false : 'no per-call cgroup on this host' }, async (t) => {
  const { cgroups } = await probeCgroups()
  const app = await build(t, { config: { TASK_SHUTDOWN_GRACE_MS: 100 }, agents: { default: { kind: 'command', argv: ['/bin/sh', '-c', "trap '' TERM; sleep 300"], timeout_ms: 60_000 } } })
  const mine = async (): Promise<string[]> => readdir(cgroups!.parent).then((names) => names.filter((name) => name.startsWith(`taskvault-${process.pid}-`)))
  await createTasks(app, 'abandoned', [{ instruction: 'x' }])
  t.equal((await post(app, '/execute-all', { session_id: 'abandoned', wait: false })).statusCode, 202)
  await waitFor('the call\'s cgroup', async () => (await mine()).length === 1)
  await app.close()
  t.same(await mine(), [], 'gone when close() resolves, not left to the next start')
})

/**
 * Moves this test process into a cgroup of its own under `parent` until the test ends. Every
 * server with command agents removes the leftovers it finds beside it at start: test files
 * running in parallel would take (and log) each other's planted leftovers.
 */
async function ownCgroup (t: TestContext, parent: string): Promise<string> {
  const dir = join(parent, `test-${process.pid}`)
  await mkdir(dir)
  await writeFile(join(dir, 'cgroup.procs'), String(process.pid))
  t.teardown(async () => {
    await writeFile(join(parent, 'cgroup.procs'), String(process.pid))
    await rmdir(dir)
  })
  return dir
}

t.test('a per-call cgroup left by a server that is gone is removed at the next start, with what it held', { skip: contained ? false : 'no per-call cgroup on this host' }, async (t) => {
  const { cgroups } = await probeCgroups()
  const parent = await ownCgroup(t, cgroups!.parent)
  // A pid that is not running: past the kernel's pid range.
  const leftover = join(parent, 'taskvault-4194999-0badcafe')
  await mkdir(leftover)
  const sleeper = spawn('/bin/sh', ['-c', `echo $$ > ${leftover}/cgroup.procs && exec sleep 300`], { stdio: 'ignore' })
  await waitFor('the process to be in the leftover cgroup', async () => (await readFile(join(leftover, 'cgroup.procs'), 'utf8')).trim() !== '')
  const log = memoryLog()
  await build(t, { logger: log.logger, agents: { default: { kind: 'command', argv: ['/bin/true'] } } })
  await t.rejects(lstat(leftover), { code: 'ENOENT' }, 'the leftover cgroup is gone')
  await waitFor('the process it held to be killed', () => sleeper.exitCode !== null || sleeper.signalCode !== null)
  t.ok(log.lines().some((line) => line.msg === 'Removing a command call\'s cgroup left by a server that is gone'), 'and the log says so')

  // A start with no command agent at all clears them too (the agents may have changed since).
  const again = join(parent, 'taskvault-4194998-0badcafe')
  await mkdir(again)
  const held = spawn('/bin/sh', ['-c', `echo $$ > ${again}/cgroup.procs && exec sleep 300`], { stdio: 'ignore' })
  await waitFor('the process to be in the leftover cgroup', async () => (await readFile(join(again, 'cgroup.procs'), 'utf8')).trim() !== '')
  await build(t, { agents: { default: { kind: 'webhook', url: 'http://127.0.0.1:9/run' } } })
  await t.rejects(lstat(again), { code: 'ENOENT' }, 'gone after a start with webhook agents only')
  await waitFor('the process it held to be killed', () => held.exitCode !== null || held.signalCode !== null)
})
