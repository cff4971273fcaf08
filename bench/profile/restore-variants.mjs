// Experiment (not product code): how fast could restore be with other read strategies, with the
// same parse + TypeBox check + normalize per file as FileSessionStore.loadFile?
//   node --expose-gc bench/profile/restore-variants.mjs /tmp/tv-10k [rounds=5]
import { constants, readFileSync, readdirSync } from 'node:fs'
import { open, readFile, readdir } from 'node:fs/promises'
import { join } from 'node:path'
import { TypeCompiler } from '@sinclair/typebox/compiler'
import pLimit from 'p-limit'
import { StoredSessionFile } from '../../dist/schemas/session.js'
import { normalizeSessionFile } from '../../dist/services/session/session.js'

const [dir, roundsArg = '5'] = process.argv.slice(2)
const check = TypeCompiler.Compile(StoredSessionFile)
const NOFOLLOW = constants.O_RDONLY | constants.O_NOFOLLOW

function accept (name, text, normalize = true) {
  const raw = JSON.parse(text)
  if (!check.Check(raw)) throw new Error(`${name} invalid`)
  if (name !== `${raw.session_id}.json`) throw new Error('name mismatch')
  const ids = new Set(raw.session.tasks.map((t) => t.id))
  if (ids.size !== raw.session.tasks.length) throw new Error('dup')
  return normalize ? normalizeSessionFile(raw) : raw
}

const variants = {
  // What loadAll does today: FileHandle open(O_NOFOLLOW) + readFile + close per file, p-limit 32.
  'current: FileHandle open+readFile+close, p-limit 32': async () => {
    const entries = await readdir(dir, { withFileTypes: true })
    const limit = pLimit(32)
    const out = []
    await Promise.all(entries.map((e) => limit(async () => {
      if (!e.isFile() || !e.name.endsWith('.json')) return
      const h = await open(join(dir, e.name), NOFOLLOW)
      let text
      try { text = await h.readFile('utf8') } finally { await h.close() }
      out.push({ file: accept(e.name, text), bytes: Buffer.byteLength(text) })
    })))
    return out.length
  },
  'fsp.readFile(path, {flag: O_NOFOLLOW}), p-limit 32': async () => {
    const entries = await readdir(dir, { withFileTypes: true })
    const limit = pLimit(32)
    const out = []
    await Promise.all(entries.map((e) => limit(async () => {
      if (!e.isFile() || !e.name.endsWith('.json')) return
      const text = await readFile(join(dir, e.name), { encoding: 'utf8', flag: NOFOLLOW })
      out.push({ file: accept(e.name, text), bytes: Buffer.byteLength(text) })
    })))
    return out.length
  },
  // One readFileSync (a single C++ call: open+fstat+read+close) per file, 256 files per batch,
  // yielding to the event loop between batches; p-limit can still bound batches in flight.
  'readFileSync(path, {flag: O_NOFOLLOW}) in batches of 256, yield between': async () => {
    const entries = await readdir(dir, { withFileTypes: true })
    const out = []
    for (let i = 0; i < entries.length; i += 256) {
      for (const e of entries.slice(i, i + 256)) {
        if (!e.isFile() || !e.name.endsWith('.json')) continue
        const text = readFileSync(join(dir, e.name), { encoding: 'utf8', flag: NOFOLLOW })
        out.push({ file: accept(e.name, text), bytes: Buffer.byteLength(text) })
      }
      await new Promise(setImmediate)
    }
    return out.length
  },
  'same, without normalizeSessionFile copies (in-place fill)': async () => {
    const entries = await readdir(dir, { withFileTypes: true })
    const out = []
    for (let i = 0; i < entries.length; i += 256) {
      for (const e of entries.slice(i, i + 256)) {
        if (!e.isFile() || !e.name.endsWith('.json')) continue
        const text = readFileSync(join(dir, e.name), { encoding: 'utf8', flag: NOFOLLOW })
        out.push({ file: accept(e.name, text, false), bytes: text.length })
      }
      await new Promise(setImmediate)
    }
    return out.length
  },
  'floor: readdirSync + readFileSync + JSON.parse into a Map': async () => {
    const map = new Map()
    for (const name of readdirSync(dir)) if (name.endsWith('.json')) map.set(name.slice(0, -5), JSON.parse(readFileSync(join(dir, name), 'utf8')))
    return map.size
  }
}

const times = Object.fromEntries(Object.keys(variants).map((k) => [k, []]))
for (let r = 0; r < Number(roundsArg); r++) {
  for (const [name, fn] of Object.entries(variants)) {
    globalThis.gc?.()
    const t = performance.now()
    const n = await fn()
    times[name].push(performance.now() - t)
    if (n === 0) throw new Error('nothing read')
  }
}
const med = (a) => [...a].sort((x, y) => x - y)[a.length >> 1]
const floor = med(times['floor: readdirSync + readFileSync + JSON.parse into a Map'])
for (const [name, list] of Object.entries(times)) console.log(`${med(list).toFixed(0).padStart(6)} ms  ${(med(list) / floor).toFixed(2)}x floor  ${name}`)

// And how much of TaskManager.restore is loadAll (reading) vs loading into the registry?
const { FileSessionStore } = await import('../../dist/services/store/file-store.js')
const { TaskManager } = await import('../../dist/services/task-manager.js')
const split = { loadAll: [], restore: [] }
for (let r = 0; r < Number(roundsArg); r++) {
  globalThis.gc?.()
  const store = new FileSessionStore({ dir })
  await store.init()
  let t = performance.now()
  await store.loadAll({ concurrency: 32 })
  split.loadAll.push(performance.now() - t)
  globalThis.gc?.()
  const manager = new TaskManager({ store })
  t = performance.now()
  await manager.restore()
  split.restore.push(performance.now() - t)
  await manager.close()
  await store.close()
}
console.log(`store.loadAll alone ${med(split.loadAll).toFixed(0)} ms; TaskManager.restore (loadAll + registry) ${med(split.restore).toFixed(0)} ms`)
