/**
 * The save queue of the PostgreSQL store on its own (save-batcher.ts): how saves are grouped
 * into statements, with a `send` that records each batch and answers when the test says.
 */
import t from 'tap'
import { SaveBatcher, type PendingSave, type SaveLimits } from '../services/store/postgres/save-batcher.js'

interface Save extends PendingSave<string> {
  label: string
}

/** A batcher whose sends wait until release(); `batches` records what each send carried. */
function harness (limits: Partial<SaveLimits> = {}): { batcher: SaveBatcher<string, Save>, batches: string[][], release: () => void } {
  const batches: string[][] = []
  const waiting: Array<() => void> = []
  const batcher = new SaveBatcher<string, Save>({ lanes: 1, maxSessions: 50, maxBytes: 1_000_000, ...limits }, async (batch) => {
    batches.push(batch.map((save) => save.label))
    await new Promise<void>((resolve) => waiting.push(resolve))
    for (const save of batch) save.resolve(`${save.label} written`)
  })
  return { batcher, batches, release: () => { for (const resolve of waiting.splice(0)) resolve() } }
}

const settle = async (): Promise<void> => new Promise((resolve) => setImmediate(resolve))

t.test('a lone save goes out at once; saves that arrive while the lane is busy go out together, in order', async (t) => {
  const { batcher, batches, release } = harness()
  const first = batcher.submit({ sessionId: 'a', bytes: 10, label: 'a1' })
  t.same(batches, [['a1']], 'sent before anything else happens')
  const rest = ['b', 'c', 'd'].map((id) => batcher.submit({ sessionId: id, bytes: 10, label: `${id}1` }))
  t.equal(batcher.waiting, 3)
  release()
  t.equal(await first, 'a1 written')
  await settle()
  t.same(batches, [['a1'], ['b1', 'c1', 'd1']])
  release()
  t.same(await Promise.all(rest), ['b1 written', 'c1 written', 'd1 written'], 'each answered with its own result')
})

t.test('a session is never twice in a batch, nor in two statements at once; its saves keep their order', async (t) => {
  const inFlight = new Set<string>()
  const problems: string[] = []
  const sent: string[][] = []
  const batcher = new SaveBatcher<string, Save>({ lanes: 3, maxSessions: 50, maxBytes: 1_000_000 }, async (batch) => {
    sent.push(batch.map((save) => save.label))
    const ids = batch.map((save) => save.sessionId)
    if (new Set(ids).size !== ids.length) problems.push(`twice in one batch: ${ids.join(',')}`)
    for (const id of ids) if (inFlight.has(id)) problems.push(`${id} in two statements at once`)
    for (const id of ids) inFlight.add(id)
    await new Promise((resolve) => setTimeout(resolve, 1 + Math.floor(Math.random() * 3)))
    for (const id of ids) inFlight.delete(id)
    for (const save of batch) save.resolve(save.label)
  })
  const order = new Map<string, string[]>()
  const saves: Array<Promise<void>> = []
  for (let i = 0; i < 300; i++) {
    const id = `s${i % 7}`
    saves.push(batcher.submit({ sessionId: id, bytes: 1, label: `${id}#${i}` }).then((label) => { order.set(id, [...(order.get(id) ?? []), label]) }))
    if (i % 13 === 0) await settle()
  }
  await Promise.all(saves)
  t.same(problems, [])
  for (const [id, labels] of order) t.same(labels.map((label) => Number(label.split('#')[1])), [...labels.map((label) => Number(label.split('#')[1]))].sort((a, b) => a - b), `${id}'s saves answered in the order they came`)
  t.ok(sent.length < 300, `300 saves in ${sent.length} statements`)
})

t.test('maxSessions and maxBytes bound a batch; a session bigger than maxBytes still goes, alone', async (t) => {
  const { batcher, batches, release } = harness({ maxSessions: 2, maxBytes: 100 })
  const saves = [
    batcher.submit({ sessionId: 'x', bytes: 10, label: 'x' }),
    batcher.submit({ sessionId: 'a', bytes: 10, label: 'a' }),
    batcher.submit({ sessionId: 'b', bytes: 10, label: 'b' }),
    batcher.submit({ sessionId: 'c', bytes: 10, label: 'c' }),
    batcher.submit({ sessionId: 'big', bytes: 500, label: 'big' }),
    batcher.submit({ sessionId: 'd', bytes: 60, label: 'd' }),
    batcher.submit({ sessionId: 'e', bytes: 60, label: 'e' })
  ]
  for (let i = 0; i < 6; i++) {
    release()
    await settle()
  }
  await Promise.all(saves)
  t.same(batches, [['x'], ['a', 'b'], ['c'], ['big'], ['d'], ['e']], 'two at most; c stops before big; d and e pass 100 bytes together')
})

t.test('a send that fails unexpectedly rejects its saves and frees the lane', async (t) => {
  let calls = 0
  const batcher = new SaveBatcher<string, Save>({ lanes: 1, maxSessions: 10, maxBytes: 1000 }, async (batch) => {
    calls++
    if (calls === 1) throw new Error('bug in send')
    for (const save of batch) save.resolve('ok')
  })
  await t.rejects(batcher.submit({ sessionId: 'a', bytes: 1, label: 'a' }), /bug in send/u)
  t.equal(await batcher.submit({ sessionId: 'a', bytes: 1, label: 'a' }), 'ok', 'the next save goes through')
})
