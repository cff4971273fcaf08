// 2. 100 concurrent saves to distinct sessions.
// Floor: the raw durable sequence x100 at once; peer: write-file-atomic x100 at once.
import { join } from 'node:path'
import writeFileAtomic from 'write-file-atomic'
import { FileSessionStore } from '../../dist/services/store/file-store.js'
import { rawDurableSave } from '../lib/durable.mjs'
import { serialize, sessionOfBytes } from '../lib/fixtures.mjs'
import { collect, median, now } from '../lib/stats.mjs'

export async function benchConcurrent ({ P, row, sections, trackedDir, dropDir }) {
  const dir = trackedDir('concurrent')
  const store = new FileSessionStore({ dir })
  await store.init()
  const files = Array.from({ length: 100 }, (_, i) => sessionOfBytes(`c${String(i).padStart(3, '0')}`, 3072))
  const datas = files.map(serialize)
  const variants = {
    ours: () => Promise.all(files.map((f) => store.save(f))),
    floor: () => Promise.all(datas.map((d, i) => rawDurableSave(dir, `floor_${i}.json`, d))),
    peer: () => Promise.all(datas.map((d, i) => writeFileAtomic(join(dir, `wfa_${i}.json`), d, { mode: 0o600, fsync: true })))
  }
  for (const fn of Object.values(variants)) await fn()
  const perRound = { ours: [], floor: [], peer: [] }
  const names = Object.keys(variants)
  for (let r = 0; r < P.rounds; r++) {
    collect()
    // Batches interleaved (order rotating), so every variant sees the same disk moments.
    const ms = Object.fromEntries(names.map((n) => [n, 0]))
    for (let b = 0; b < P.concurrentBatches; b++) {
      for (let k = 0; k < names.length; k++) {
        const name = names[(b + k + r) % names.length]
        const t = now()
        await variants[name]()
        ms[name] += now() - t
      }
    }
    for (const name of names) perRound[name].push((100 * P.concurrentBatches) / (ms[name] / 1000))
  }
  const res = { batch: 100, batches_per_round: P.concurrentBatches }
  for (const name of Object.keys(perRound)) res[name] = { saves_per_s: median(perRound[name]), rounds: perRound[name] }
  sections.concurrent = res
  const ratio = res.ours.saves_per_s / res.floor.saves_per_s
  row('100 concurrent saves, distinct sessions', { ours: res.ours.saves_per_s, floor: res.floor.saves_per_s, floorLabel: 'raw sequence x100 at once', unit: 'saves/s', ratio, ratioOf: 'ours/floor', goal: '>= 0.9', met: ratio >= 0.9 })
  row('100 concurrent saves vs write-file-atomic', { ours: res.ours.saves_per_s, floor: res.peer.saves_per_s, floorLabel: 'write-file-atomic x100 at once', unit: 'saves/s', ratio: res.ours.saves_per_s / res.peer.saves_per_s, ratioOf: 'ours/peer' })
  await store.close()
  dropDir(dir)
}
