// 1. Sequential save of one 3 KB session: store.save vs raw sequence vs write-file-atomic.
// Floor: the raw durable sequence (lib/durable.mjs) on the same bytes. Peer: write-file-atomic,
// which fsyncs the file but not the folder. floor_sync (blocking calls) is informational only.
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import writeFileAtomic from 'write-file-atomic'
import { FileSessionStore } from '../../dist/services/store/file-store.js'
import { rawDurableSave, rawDurableSaveSync } from '../lib/durable.mjs'
import { serialize, sessionOfBytes } from '../lib/fixtures.mjs'
import { collect, interleaved, median, percentile } from '../lib/stats.mjs'

export async function benchSave ({ P, row, sections, trackedDir, dropDir }) {
  const dir = trackedDir('save')
  const store = new FileSessionStore({ dir })
  await store.init()
  const file = sessionOfBytes('save_one', 3072)
  const data = serialize(file)
  await store.save(file)
  const sameBytes = readFileSync(join(dir, 'save_one.json')).equals(data)
  const variants = {
    ours: () => store.save(file),
    floor: () => rawDurableSave(dir, 'floor_one.json', data),
    peer: () => writeFileAtomic(join(dir, 'wfa_one.json'), data, { mode: 0o600, fsync: true }),
    floor_sync: async () => rawDurableSaveSync(dir, 'sync_one.json', data)
  }
  for (const fn of Object.values(variants)) for (let i = 0; i < 30; i++) await fn()
  const perRound = { ours: [], floor: [], peer: [], floor_sync: [] }
  const names = Object.keys(variants)
  for (let r = 0; r < P.rounds; r++) {
    collect()
    const times = await interleaved(variants, P.saveN)
    for (const name of names) perRound[name].push({ p50: percentile(times[name], 50), p99: percentile(times[name], 99) })
  }
  const m = (name, key) => median(perRound[name].map((x) => x[key]))
  const res = { bytes: data.length, same_bytes: sameBytes, saves_per_round: P.saveN }
  for (const name of Object.keys(perRound)) res[name] = { p50_ms: m(name, 'p50'), p99_ms: m(name, 'p99'), rounds: perRound[name] }
  sections.save = res
  row('save 3 KB session, sequential p50', { ours: res.ours.p50_ms, floor: res.floor.p50_ms, floorLabel: 'raw sequence', unit: 'ms', ratio: res.ours.p50_ms / res.floor.p50_ms, ratioOf: 'ours/floor', goal: '<= 1.2', met: res.ours.p50_ms / res.floor.p50_ms <= 1.2 })
  row('save 3 KB session, sequential p99', { ours: res.ours.p99_ms, floor: res.floor.p99_ms, floorLabel: 'raw sequence', unit: 'ms', ratio: res.ours.p99_ms / res.floor.p99_ms, ratioOf: 'ours/floor' })
  row('save 3 KB session, p50 vs write-file-atomic', { ours: res.ours.p50_ms, floor: res.peer.p50_ms, floorLabel: 'write-file-atomic (no folder fsync)', unit: 'ms', ratio: res.ours.p50_ms / res.peer.p50_ms, ratioOf: 'ours/peer', goal: '< 1 (beat it)', met: res.ours.p50_ms < res.peer.p50_ms })
  row('save 3 KB session, p99 vs write-file-atomic', { ours: res.ours.p99_ms, floor: res.peer.p99_ms, floorLabel: 'write-file-atomic (no folder fsync)', unit: 'ms', ratio: res.ours.p99_ms / res.peer.p99_ms, ratioOf: 'ours/peer' })
  await store.close()
  dropDir(dir)
}
