// The disk's own ceiling for the cold section: reads every .json file of a folder, not parsing
// them, with `depth` reads in flight on libuv's threads (UV_THREADPOOL_SIZE is set to `depth` by
// the parent, as it must be before the first read). Prints one JSON line: { ms, files, bytes }.
// Run in a child so that each depth gets a thread pool of its own size.
// Usage: node bench/read-probe-child.mjs <dir> <depth>
import { readdirSync } from 'node:fs'
import { readFile } from 'node:fs/promises'
import { join } from 'node:path'

const [dir, depthArg] = process.argv.slice(2)
const depth = Number(depthArg)
if (!dir || !Number.isInteger(depth) || depth < 1) {
  console.error('usage: read-probe-child.mjs <dir> <depth>')
  process.exit(2)
}

const start = performance.now()
const names = readdirSync(dir).filter((name) => name.endsWith('.json'))
let next = 0
let bytes = 0
async function reader () {
  while (next < names.length) {
    const name = names[next++]
    bytes += (await readFile(join(dir, name))).length
  }
}
await Promise.all(Array.from({ length: Math.min(depth, names.length) }, reader))
process.stdout.write(JSON.stringify({ ms: performance.now() - start, files: names.length, bytes }) + '\n')
