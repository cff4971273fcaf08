/**
 * Joined abort signals (services/runner/signals.ts): every run and agent call joins the
 * process-lifetime shutdown signal, so a join must let go of its sources, or memory grows with
 * every call (Node 20's AbortSignal.any keeps a reference per join on a long-lived source).
 */
import { getEventListeners, setMaxListeners } from 'node:events'
import v8 from 'node:v8'
import vm from 'node:vm'
import t from 'tap'
import { callAgent } from '../services/runner/agent-call.js'
import { DEFAULT_POLICY, type Agent } from '../services/runner/executors.js'
import { anySignal, pause } from '../services/runner/signals.js'
import type { Task } from '../services/session/session.js'

t.test('anySignal: aborts with the first source\'s reason; released or aborted, it leaves no listener on its sources', async (t) => {
  const lifetime = new AbortController()
  for (let i = 0; i < 10_000; i++) {
    const call = new AbortController()
    const joined = anySignal([lifetime.signal, call.signal])
    if (i % 2 === 0) call.abort(new Error(`cancelled ${i}`))
    else joined.release()
    if (i === 0) t.match(joined.signal.reason, { message: 'cancelled 0' }, 'the source\'s reason')
  }
  t.equal(getEventListeners(lifetime.signal, 'abort').length, 0, 'nothing left on the long-lived signal')
  const late = anySignal([lifetime.signal])
  lifetime.abort(new Error('shutdown'))
  t.ok(late.signal.aborted, 'a source that aborts later aborts the join')
  const already = anySignal([lifetime.signal])
  t.ok(already.signal.aborted, 'a source aborted already: the join is born aborted')
})

t.test('pause: the time, or until a signal aborts; it leaves no listener behind', async (t) => {
  const lifetime = new AbortController()
  let started = Date.now()
  await pause(50, [lifetime.signal])
  t.ok(Date.now() - started >= 45, 'waits its time')
  const waiting = pause(60_000, [lifetime.signal, new AbortController().signal])
  started = Date.now()
  setTimeout(() => { lifetime.abort() }, 20)
  await waiting
  t.ok(Date.now() - started < 5000, 'ends when a signal aborts')
  const other = new AbortController()
  // Shared by a thousand waits at once, as the runner's own signals are (it lifts their listener bound too).
  setMaxListeners(0, other.signal)
  await Promise.all(Array.from({ length: 1000 }, async () => pause(1, [other.signal])))
  t.equal(getEventListeners(other.signal, 'abort').length, 0, 'nothing left on the signal')
})

t.test('agent calls under one long-lived signal: memory does not grow with the number of calls', async (t) => {
  v8.setFlagsFromString('--expose-gc')
  const gc = vm.runInNewContext('gc') as () => void
  const lifetime = new AbortController()
  const agent: Agent = { key: 'default', kind: 'echo', policy: DEFAULT_POLICY, run: async (task) => ({ result: task.instruction }) }
  const task = { id: 'task_1_1', instruction: 'x', task_type: 'General', status: 'InProgress', attempts: 1 } as unknown as Task
  const calls = async (n: number): Promise<void> => {
    for (let i = 0; i < n; i++) await callAgent({ agent, task, sessionId: 's', signal: lifetime.signal, shutdownSignal: lifetime.signal }, () => {})
  }
  // Collected twice with a turn between: what a first collection finds dead may only be freed after finalizers run.
  const settled = async (): Promise<number> => {
    gc()
    await new Promise((resolve) => setImmediate(resolve))
    gc()
    return process.memoryUsage().heapUsed
  }
  await calls(20_000)
  const before = await settled()
  // With AbortSignal.any, Node 20 kept some 2 KB a call alive through the long-lived signal
  // (about 100 MB here). Without a leak the figure is the collector's noise: -1.6 to 2.6 MB
  // alone, once 4.4 MB on Node 26 beside other test files; a tenth of the leak is the bound.
  await calls(50_000)
  const grown = await settled() - before
  t.ok(grown < 10 * 1024 * 1024, `the heap grew ${(grown / 1024 / 1024).toFixed(2)} MB over 50,000 calls`)
})
