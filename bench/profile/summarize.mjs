// Usage: node bench/profile/summarize.mjs FILE.cpuprofile [top=25]
// Prints self time by function (and by file) from a V8 CPU profile written by --cpu-prof.
import { readFileSync } from 'node:fs'

const [file, topArg] = process.argv.slice(2)
const top = Number(topArg ?? 25)
const profile = JSON.parse(readFileSync(file, 'utf8'))
const byId = new Map(profile.nodes.map((n) => [n.id, n]))
const self = new Map()
const dt = profile.timeDeltas
for (let i = 0; i < profile.samples.length; i++) self.set(profile.samples[i], (self.get(profile.samples[i]) ?? 0) + (dt[i] ?? 0))
const total = [...self.values()].reduce((a, b) => a + b, 0)
const byFn = new Map()
const byFile = new Map()
for (const [id, us] of self) {
  const { callFrame: f } = byId.get(id)
  const where = f.url ? f.url.replace(/^file:\/\//, '').replace(process.cwd() + '/', '') : '(native)'
  const key = `${f.functionName || '(anonymous)'}  ${where}:${f.lineNumber + 1}`
  byFn.set(key, (byFn.get(key) ?? 0) + us)
  const bucket = where.includes('node_modules/') ? where.replace(/.*node_modules\/((?:@[^/]+\/)?[^/]+).*/, 'dep: $1') : where.startsWith('node:') ? 'node core: ' + where : where
  byFile.set(bucket, (byFile.get(bucket) ?? 0) + us)
}
const pct = (us) => `${((100 * us) / total).toFixed(1).padStart(5)}%  ${(us / 1000).toFixed(1).padStart(8)} ms`
console.log(`total sampled: ${(total / 1000).toFixed(1)} ms\n\nself time by function:`)
for (const [k, us] of [...byFn].sort((a, b) => b[1] - a[1]).slice(0, top)) console.log(`${pct(us)}  ${k}`)
console.log('\nself time by file or package:')
for (const [k, us] of [...byFile].sort((a, b) => b[1] - a[1]).slice(0, 15)) console.log(`${pct(us)}  ${k}`)
