// The peer workload shared by the postgres and peers sections: S groups of T tasks created, then
// completed by a no-op handler with IN_FLIGHT at once, on taskvault (its programmatic API, any
// store) and on pg-boss. Each side returns { ms, tasks, ... } timed from the first create/insert
// to the last completion being committed.
import pg from 'pg'
import PgBoss from 'pg-boss'
import { TaskManager } from '../../dist/services/task-manager.js'
import { makeSession } from './fixtures.mjs'
import { now } from './stats.mjs'

/** Sessions (taskvault) or jobs (peers) being worked on at once. */
export const IN_FLIGHT = 16

/** At most `limit` of `fns` running at once; resolves with their results in order. */
export async function limited (limit, fns) {
  const results = new Array(fns.length)
  let next = 0
  const lane = async () => {
    while (next < fns.length) {
      const i = next++
      results[i] = await fns[i]()
    }
  }
  await Promise.all(Array.from({ length: Math.min(limit, fns.length) }, lane))
  return results
}

/** The T task specs every taskvault session gets (the bench's usual instructions, all Pending). */
export function taskSpecs (T) {
  return makeSession('x', T, { status: 'pending' }).session.tasks.map((t) => ({ instruction: t.instruction, task_type: t.task_type }))
}

/** Tasks per second of a side's result. */
export const tasksPerSecond = (x) => x.tasks / (x.ms / 1000)

/**
 * taskvault through TaskManager on `store` (initialised, left open), auto-save on, the echo agent:
 * S sessions of T tasks created at once, then executeAll with IN_FLIGHT sessions at once.
 * `warm`: one small session created and executed first, off the clock (as a server has run
 * before). `onStart` runs after restore, right before the clock starts, and `onEnd` after the
 * check, before the manager closes (for counters).
 */
export async function runTaskvault (store, S, T, { prefix = 'pb', warm = false, onStart, onEnd } = {}) {
  const manager = new TaskManager({ store, autoSave: true })
  await manager.restore()
  const specs = taskSpecs(T)
  try {
    if (warm) {
      await manager.create(`${prefix}_warm`, specs.slice(0, 2))
      await manager.executeAll(`${prefix}_warm`)
    }
    onStart?.()
    const t = now()
    await Promise.all(Array.from({ length: S }, (_, s) => manager.create(`${prefix}_${s}`, specs)))
    const done = await limited(IN_FLIGHT, Array.from({ length: S }, (_, s) => () => manager.executeAll(`${prefix}_${s}`)))
    const ms = now() - t
    const executed = done.reduce((a, x) => a + x.results.filter((r) => r.status === 'Completed').length, 0)
    if (executed !== S * T) throw new Error(`taskvault executed ${executed}/${S * T}`)
    onEnd?.()
    return { ms, tasks: S * T }
  } finally {
    await manager.close()
  }
}

/** pg-boss: S inserts of T jobs into one queue, then IN_FLIGHT workers (batchSize 1) completing them with a no-op handler. */
export async function runPgBoss (url, queue, S, T) {
  const boss = new PgBoss(url)
  boss.on('error', () => {})
  await boss.start()
  await boss.createQueue(queue)
  // Every statement pg-boss sends goes through its db's executeSql: counted by kind.
  const bossDb = boss.getDb()
  const original = bossDb.executeSql.bind(bossDb)
  const statements = new Map()
  let counting = false
  bossDb.executeSql = (text, values) => {
    if (counting) {
      let key = (/^\s*(\w+)/.exec(text)?.[1] ?? '?').toUpperCase()
      if (/INSERT INTO/i.test(text)) key = 'insert'
      else if (/UPDATE[\s\S]*state = 'completed'/i.test(text)) key = 'complete'
      else if (/state = 'active',\s*started_on/i.test(text)) key = 'fetch'
      statements.set(key, (statements.get(key) ?? 0) + 1)
    }
    return original(text, values)
  }
  const N = S * T
  let handled = 0
  let finish
  const allHandled = new Promise((resolve) => { finish = resolve })
  const ids = []
  counting = true
  const t = now()
  for (let s = 0; s < S; s++) await boss.insert(Array.from({ length: T }, (_, k) => ({ name: queue, data: { session: s, task: k } })))
  for (let w = 0; w < IN_FLIGHT; w++) {
    ids[w] = await boss.work(queue, { batchSize: 1, pollingIntervalSeconds: 0.5 }, async () => {
      // The no-op handler; the worker fetches again at once instead of after its polling interval.
      if (++handled === N) finish()
      boss.notifyWorker(ids[w])
    })
  }
  await allHandled
  // pg-boss completes a job after the handler resolves, without awaiting it: wait for the rows.
  const check = new pg.Client({ connectionString: url })
  await check.connect()
  for (;;) {
    const { rows } = await check.query("SELECT count(*)::int AS n FROM pgboss.job WHERE name = $1 AND state = 'completed'", [queue])
    if (rows[0].n >= N) break
    await new Promise((resolve) => setTimeout(resolve, 5))
  }
  const ms = now() - t
  counting = false
  await check.end()
  await boss.stop({ graceful: true, wait: true, close: true })
  return { ms, tasks: N, statements: Object.fromEntries(statements), statements_total: [...statements.values()].reduce((a, b) => a + b, 0) }
}
