/**
 * The server's log destination on real files, with faults injected at its write seam: lines lost
 * to a failing disk are counted exactly and reported once writing works again, a line cut by a
 * partial write is ended so every line stays JSON, and the queue is bounded.
 */
import { execFileSync, spawn } from 'node:child_process'
import { closeSync, constants, openSync, readFileSync, write, writeSync } from 'node:fs'
import { join } from 'node:path'
import { setImmediate as nextTurn, setTimeout as sleep } from 'node:timers/promises'
import t from 'tap'
import { LogDestination, type LogWrites } from '../http/log-destination.js'
import { tempDir, waitFor } from './helper.js'

/**
 * Writes to a real file, following a plan, one step per call: an error code fails the call, a
 * number lands that many bytes at most; past the plan every call fails with `fail(code)`'s code,
 * or writes in full once `heal()`ed.
 */
function faultyWrites (): LogWrites & { plan: (...steps: Array<string | number>) => void, fail: (code: string) => void, heal: () => void } {
  let failing: string | null = null
  const steps: Array<string | number> = []
  const faulty = ((fd: number, data: Buffer, offset: number, length: number, position: null, done: (err: NodeJS.ErrnoException | null, written: number) => void) => {
    const step = steps.shift() ?? failing
    // Answered at once: no failing write is ever in flight.
    if (typeof step === 'string') {
      done(Object.assign(new Error(step), { code: step }), 0)
      return
    }
    write(fd, data, offset, step === null ? length : Math.min(step, length), position, (err, written) => { done(err, written) })
  }) as unknown as typeof write
  return {
    write: faulty,
    writeSync,
    plan: (...planned) => { steps.push(...planned) },
    fail: (code) => { failing = code },
    heal: () => { failing = null }
  }
}

async function logFile (t: Parameters<typeof tempDir>[0]): Promise<{ path: string, fd: number }> {
  const path = join(await tempDir(t), 'out.log')
  const fd = openSync(path, 'a')
  t.teardown(() => { closeSync(fd) })
  return { path, fd }
}

const lines = (path: string): Array<Record<string, unknown>> => readFileSync(path, 'utf8').split('\n').filter((line) => line !== '').map((line) => JSON.parse(line) as Record<string, unknown>)
const line = (i: number): string => `${JSON.stringify({ level: 30, i, msg: `line ${i}` })}\n`

t.test('lines lost while writes fail are counted one by one, reported in one warning once writing works, and the lines after it follow', async (t) => {
  const { path, fd } = await logFile(t)
  const io = faultyWrites()
  const log = new LogDestination({ fd, io, retryMs: 5 })
  log.write(line(0))
  await waitFor('the first line written', () => readFileSync(path, 'utf8').includes('line 0'))
  io.fail('ENOSPC')
  // A line a turn, and the failing writes retried meanwhile: many batches fail, reports among them.
  for (let i = 1; i <= 100; i++) {
    log.write(line(i))
    await nextTurn()
    if (i % 10 === 0) await sleep(10)
  }
  await sleep(30)
  io.heal()
  log.write(line(101))
  await waitFor('the last line written', () => readFileSync(path, 'utf8').includes('line 101'))
  const written = lines(path)
  const report = written.find((entry) => 'dropped_lines' in entry)
  t.match(report, { level: 40, dropped_lines: 100, reason: 'writing failed: ENOSPC', msg: '100 log lines were dropped (writing failed: ENOSPC)' })
  t.same(written.filter((entry) => 'i' in entry).map((entry) => entry.i), [0, 101], 'the lines written, in order, and the report between them')
  t.equal(log.droppedLines, 0, 'nothing left to report')
})

t.test('a batch cut by a partial write, then failing: the cut line is ended, so every line written stays JSON, and the lost ones are counted', async (t) => {
  const { path, fd } = await logFile(t)
  const io = faultyWrites()
  const log = new LogDestination({ fd, io, retryMs: 5 })
  // The first write finds the pipe full, so lines 1 to 9 wait and go as one batch, which lands 3
  // lines and a bit of the fourth; the rest of it fails.
  io.plan('EAGAIN', Number.MAX_SAFE_INTEGER, line(0).length * 3 + 10, 'EIO')
  for (let i = 0; i < 10; i++) log.write(line(i))
  await waitFor('the partial write', () => readFileSync(path, 'utf8').includes('line 3'))
  await sleep(30)
  log.write(line(10))
  await waitFor('the next line', () => readFileSync(path, 'utf8').includes('line 10'))
  const text = readFileSync(path, 'utf8').split('\n').filter((entry) => entry !== '')
  const parsed = text.filter((entry) => { try { JSON.parse(entry); return true } catch { return false } })
  t.equal(text.length - parsed.length, 1, 'one line is cut (the fourth), and ended there')
  const entries = parsed.map((entry) => JSON.parse(entry) as Record<string, unknown>)
  t.match(entries.find((entry) => 'dropped_lines' in entry), { dropped_lines: 6, reason: 'writing failed: EIO' }, 'the cut line and the five after it are counted')
  t.same(entries.filter((entry) => 'i' in entry).map((entry) => entry.i), [0, 1, 2, 3, 10])
})

t.test('the queue is bounded: past LOG_QUEUE_BYTES lines are dropped and counted, one line longer than the bound is still taken alone, and the exit writes what is queued', async (t) => {
  const { path, fd } = await logFile(t)
  const io = faultyWrites()
  io.fail('EAGAIN')
  const log = new LogDestination({ fd, io, maxQueuedBytes: 1000 })
  for (let i = 0; i < 40; i++) log.write(line(i))
  const dropped = log.droppedLines
  t.ok(dropped > 0, `${dropped} of 40 lines dropped`)
  io.heal()
  log.flushSync()
  t.equal(log.droppedLines, 0, 'reported by the exit\'s write')
  const written = lines(path)
  const report = written.find((entry) => 'dropped_lines' in entry)
  t.match(report, { level: 40, reason: 'LOG_QUEUE_BYTES reached', dropped_lines: dropped })
  const kept = written.filter((entry) => 'i' in entry)
  t.equal(kept.length + dropped, 40, 'every line written at exit, or counted')
  t.ok(kept.reduce((sum, entry) => sum + line(entry.i as number).length, 0) <= 1000, 'what was kept fits the bound')
  t.ok(kept.length + 1 > 1000 / line(10).length, 'and fills it')

  const { path: other, fd: otherFd } = await logFile(t)
  const alone = new LogDestination({ fd: otherFd, maxQueuedBytes: 100 })
  const long = `${JSON.stringify({ level: 30, msg: 'x'.repeat(500) })}\n`
  alone.write(long)
  await waitFor('the long line', () => readFileSync(other, 'utf8') === long)
  t.equal(alone.droppedLines, 0, 'a line longer than the bound, with nothing queued, is written')
})

t.test('lines dropped at a full queue are counted as printed, as a failed write\'s are: a pretty entry of three lines counts three', async (t) => {
  const { path, fd } = await logFile(t)
  const io = faultyWrites()
  io.fail('EAGAIN')
  const log = new LogDestination({ fd, io, maxQueuedBytes: 10 })
  log.write('first\n')
  for (let i = 0; i < 4; i++) log.write(`[12:00:00.000] INFO: entry ${i}\n    a: 1\n    b: 2\n`)
  t.equal(log.droppedLines, 12, 'four entries of three lines each')
  // Written out now: its fd is closed with the test, and a later write would land in another test's file.
  io.heal()
  log.flushSync()
  t.match(readFileSync(path, 'utf8'), /^first\n[^]*"dropped_lines":12/u, 'the line kept, then the report')
})

t.test('at exit a pipe whose reader is slow gets every line: the exit waits for it (up to 2 s), without ever blocking', async (t) => {
  const dir = await tempDir(t)
  const fifo = join(dir, 'log.fifo')
  execFileSync('mkfifo', [fifo])
  // A reader end held open and never read (so the pipe has one), and the end the log writes to.
  const idle = openSync(fifo, constants.O_RDWR)
  const end = openSync(fifo, constants.O_WRONLY)
  const log = new LogDestination({ fd: end })
  closeSync(end)
  // Some 400 KB: far past what the pipe holds, queued because nothing reads.
  for (let i = 0; i < 4000; i++) log.write(`${JSON.stringify({ level: 30, i, msg: 'x'.repeat(80) })}\n`)
  await sleep(50)
  // A reader that starts half a second into the exit's flush.
  const out = join(dir, 'out.log')
  const reader = spawn('/bin/sh', ['-c', `sleep 0.5; exec cat "${fifo}" > "${out}"`], { stdio: 'ignore' })
  const done = new Promise<void>((resolve) => reader.once('close', () => { resolve() }))
  t.teardown(() => { reader.kill('SIGKILL') })
  log.flushSync()
  closeSync(idle)
  t.not(await Promise.race([done, sleep(20_000, 'stuck', { ref: false })]), 'stuck', 'the reader got to the end (every writer closed)')
  const got = readFileSync(out, 'utf8').split('\n').filter((entry) => entry !== '').map((entry) => (JSON.parse(entry) as { i: number }).i)
  const before = 4000 - got.length
  t.ok(got.length > 0 && got.every((i, at) => at === 0 || i === (got[at - 1] as number) + 1), `in order, none missing from the reader's first (${got.length} lines)`)
  t.equal(got.at(-1), 3999, 'the last line too')
  t.comment(`${before} lines went into the pipe before the reader came (read by nobody)`)
})
