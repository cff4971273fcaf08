// The disk's own ceiling for the cold section: reads every .json file of a folder, not parsing
// them, with `depth` reads in flight: `depth` threads, each reading its share one file at a time
// with blocking calls (as restore's reader threads do; libuv's thread pool would add a round trip
// per call, which on some VMs costs more than the read). The clock starts once every thread is
// up, and takes in the listing. Prints one JSON line: { ms, files, bytes }. Run in a child of its own for each depth.
// Usage: node bench/read-probe-child.mjs <dir> <depth>
import { readdirSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import { Worker, isMainThread, parentPort, workerData } from 'node:worker_threads'

if (isMainThread) {
  const [dir, depthArg] = process.argv.slice(2)
  const depth = Number(depthArg)
  if (!dir || !Number.isInteger(depth) || depth < 1) {
    console.error('usage: read-probe-child.mjs <dir> <depth>')
    process.exit(2)
  }
  const workers = Array.from({ length: depth }, () => new Worker(new URL(import.meta.url), { workerData: { dir } }))
  const next = (worker) => new Promise((resolve, reject) => { worker.once('message', resolve); worker.once('error', reject) })
  await Promise.all(workers.map(next)) // each posts once it is up
  // Timed from the listing, as the floor and the restore are.
  const start = performance.now()
  const names = readdirSync(dir).filter((name) => name.endsWith('.json'))
  const done = workers.map(next)
  // Batches of 128 names in turn, as restore hands them out.
  workers.forEach((worker, k) => worker.postMessage(names.filter((_, i) => Math.floor(i / 128) % depth === k)))
  const bytes = (await Promise.all(done)).reduce((sum, n) => sum + n, 0)
  const ms = performance.now() - start
  await Promise.all(workers.map((worker) => worker.terminate()))
  process.stdout.write(JSON.stringify({ ms, files: names.length, bytes }) + '\n')
} else {
  const { dir } = workerData
  parentPort.once('message', (names) => {
    let bytes = 0
    for (const name of names) bytes += readFileSync(join(dir, name)).length
    parentPort.postMessage(bytes)
  })
  parentPort.postMessage('up')
}
