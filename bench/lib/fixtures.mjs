// Session files in the format the store writes (every field present, pretty-printed, newline).
import { execFileSync } from 'node:child_process'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { FileSessionStore } from '../../dist/services/store/file-store.js'
import { serializeSessionFile } from '../../dist/services/store/session-files.js'
import { FORMAT_VERSION, MARKER_FILE } from '../../dist/services/store/storage-folder.js'

const BASE_MS = Date.parse('2025-11-04T08:00:00.000Z')
const TYPES = ['Coding', 'Analysis', 'Research', 'Reasoning', 'General']
const iso = (ms) => new Date(ms).toISOString()

/** Same serialization as FileSessionStore.save (indent 2, trailing newline). */
export const serialize = (file) => Buffer.from(JSON.stringify(file, null, 2) + '\n', 'utf8')

export function sessionId (i) {
  return `s${String(i).padStart(6, '0')}`
}

/**
 * A realistic session: 60% Completed (with a result), 10% Failed, the rest Pending.
 * `status: 'pending'` makes every task Pending (for sessions that will be executed).
 */
export function makeSession (id, tasks = 10, { status = 'mixed', seed = 0 } = {}) {
  const start = BASE_MS + seed * 1000
  const list = []
  const done = status === 'mixed' ? Math.round(tasks * 0.6) : 0
  const failed = status === 'mixed' ? Math.round(tasks * 0.1) : 0
  for (let k = 0; k < tasks; k++) {
    const type = TYPES[k % TYPES.length]
    const instruction = `Step ${k + 1}: ${type === 'Coding' ? 'implement' : type.toLowerCase()} the ${['parser', 'store', 'scheduler', 'report', 'migration'][k % 5]} for ticket ${id}-${k} and record what changed`
    const task = {
      id: `task_${k + 1}_${Math.floor(start / 1000)}`,
      instruction,
      task_type: type,
      status: 'Pending',
      result: null,
      error: null,
      confidence: null,
      created_at: iso(start),
      started_at: null,
      completed_at: null,
      attempts: 0
    }
    if (k < done) {
      Object.assign(task, {
        status: 'Completed',
        result: `Done: ${instruction}. Output written to artifacts/${id}/${k}.txt after checking edge cases and tests.`,
        confidence: 0.9,
        started_at: iso(start + k * 2000 + 1000),
        completed_at: iso(start + k * 2000 + 1900),
        attempts: 1
      })
    } else if (k < done + failed) {
      Object.assign(task, {
        status: 'Failed',
        error: 'agent timed out after 30000 ms',
        started_at: iso(start + k * 2000 + 1000),
        completed_at: iso(start + k * 2000 + 1900),
        attempts: 1
      })
    }
    list.push(task)
  }
  const currentIndex = list.findIndex((t) => t.status === 'Pending' || t.status === 'InProgress')
  return {
    session_id: id,
    created_at: iso(start),
    updated_at: iso(start + tasks * 2000),
    session: { session_id: id, tasks: list, current_index: currentIndex === -1 ? list.length : currentIndex }
  }
}

/** A session whose stored form is about `bytes` long (Pending tasks, the last one padded to fit). */
export function sessionOfBytes (id, bytes) {
  let tasks = 1
  while (serialize(makeSession(id, tasks + 1, { status: 'pending' })).length <= bytes) tasks++
  const file = makeSession(id, tasks, { status: 'pending' })
  const missing = bytes - serialize(file).length
  const last = file.session.tasks[file.session.tasks.length - 1]
  if (missing > 0) last.instruction += ' ' + 'x'.repeat(Math.max(0, missing - 1))
  return file
}

/**
 * Writes every session of the storage folder `source` into the new folder `target`, sealed under
 * `keyring`'s active key, as a store would write it (the folder marked); the files are written
 * as the fixtures are (no fsync each, one sync at the end).
 */
export async function writeSealedCopy (source, target, keyring) {
  const { sessions } = await new FileSessionStore({ dir: source }).loadAll({ concurrency: 2 })
  const store = new FileSessionStore({ dir: target, keyring })
  await store.init()
  await store.close()
  for (const { file } of sessions) writeFileSync(join(target, `${file.session_id}.json`), await serializeSessionFile(file, 2, Number.POSITIVE_INFINITY, keyring), { mode: 0o600 })
  execFileSync('sync')
}

export function tempDir (label) {
  return mkdtempSync(join(tmpdir(), `taskvault-bench-${label}-`))
}

export function removeDir (dir) {
  rmSync(dir, { recursive: true, force: true })
}

/**
 * Writes `count` session files (not fsynced; `sync` at the end keeps writeback out of later
 * timings) and the folder's marker, as in a folder taskvault made: without it the first store to
 * open the folder reads every file once to adopt it (2.4 s at 10,000 here, untimed but waited for).
 * `marker: false` for a folder that is not a storage folder itself (an archive/).
 */
export function writeSessions (dir, count, tasksPerSession = 10, { marker = true } = {}) {
  if (marker) writeFileSync(join(dir, MARKER_FILE), JSON.stringify({ format: FORMAT_VERSION }) + '\n', { mode: 0o600 })
  let bytes = 0
  for (let i = 0; i < count; i++) {
    const id = sessionId(i)
    const data = serialize(makeSession(id, tasksPerSession, { seed: i % 86_400 }))
    writeFileSync(join(dir, `${id}.json`), data, { mode: 0o600 })
    bytes += data.length
  }
  try { execFileSync('sync') } catch {}
  return { dir, count, tasksPerSession, bytes }
}

/** Three tasks of different types (autosave section), and the same tasks as a numbered text (POST /create). */
export const THREE_TASKS = [
  { instruction: 'Write code for the binary search function', task_type: 'Coding' },
  { instruction: 'Analyze the latency logs from last night', task_type: 'Analysis' },
  { instruction: 'Research prior art on write coalescing', task_type: 'Research' }
]
export const THREE_TASK_TEXT = '1. Write code for the binary search function\n2. Analyze the latency logs from last night\n3. Research prior art on write coalescing'
