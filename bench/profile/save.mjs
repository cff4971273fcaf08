// Driver for profiling sequential saves of one 3 KB session:
//   node --cpu-prof --cpu-prof-dir=/tmp/prof bench/profile/save.mjs [saves=3000]
// Alternates blocks of FileSessionStore.save and of the raw durable sequence on the same bytes,
// printing both p50s, so the profile and the gap come from the same run.
import { TypeCompiler } from '@sinclair/typebox/compiler'
import { SessionFile } from '../../dist/schemas/session.js'
import { FileSessionStore } from '../../dist/services/store/file-store.js'
import { rawDurableSave } from '../lib/durable.mjs'
import { removeDir, serialize, sessionOfBytes, tempDir } from '../lib/fixtures.mjs'
import { percentile } from '../lib/stats.mjs'

const saves = Number(process.argv[2] ?? 3000)
const dir = tempDir('profile-save')
try {
  const store = new FileSessionStore({ dir })
  await store.init()
  const file = sessionOfBytes('save_one', 3072)
  const data = serialize(file)
  const ours = []
  const floor = []
  for (let block = 0; block < 10; block++) {
    for (let i = 0; i < saves / 10; i++) { const t = performance.now(); await store.save(file); ours.push(performance.now() - t) }
    for (let i = 0; i < saves / 10; i++) { const t = performance.now(); await rawDurableSave(dir, 'floor.json', data); floor.push(performance.now() - t) }
  }
  // CPU cost of the non-I/O part of save, measured alone.
  const t = performance.now()
  for (let i = 0; i < 10_000; i++) Buffer.from(JSON.stringify(file, null, 2) + '\n', 'utf8')
  const stringifyUs = (performance.now() - t) * 1000 / 10_000
  const check = TypeCompiler.Compile(SessionFile)
  const c = performance.now()
  for (let i = 0; i < 10_000; i++) if (!check.Check(file)) throw new Error('invalid')
  const checkUs = (performance.now() - c) * 1000 / 10_000
  console.log(`store.save p50 ${percentile(ours, 50).toFixed(3)} ms, p99 ${percentile(ours, 99).toFixed(3)} ms; raw p50 ${percentile(floor, 50).toFixed(3)} ms, p99 ${percentile(floor, 99).toFixed(3)} ms; pretty stringify+Buffer ${stringifyUs.toFixed(1)} us; schema check ${checkUs.toFixed(1)} us`)
  await store.close()
} finally {
  removeDir(dir)
}
