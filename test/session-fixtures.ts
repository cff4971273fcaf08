/** Session files written straight to disk, for tests that prepare a storage folder by hand. */
import { mkdir, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { markAsTaskvault, tempDir, type TestContext } from './helper.js'

const DAY = 86_400_000
/** An ISO time `days` before now. */
export const daysAgo = (days: number): string => new Date(Date.now() - days * DAY).toISOString()

/** The text of a stored session whose tasks have `statuses`, each done one (Completed or Failed) at `finished`. */
export function storedSession (id: string, statuses: string[], finished: string, instruction = 'step'): string {
  const tasks = statuses.map((status, i) => ({
    id: `task_${i + 1}`,
    instruction: `${instruction} ${i + 1}`,
    task_type: 'General',
    status,
    result: status === 'Completed' ? 'ok' : null,
    error: status === 'Failed' ? 'boom' : null,
    confidence: null,
    created_at: '2025-01-01T00:00:00.000Z',
    started_at: null,
    completed_at: status === 'Completed' || status === 'Failed' ? finished : null,
    attempts: 1
  }))
  const current = tasks.findIndex((task) => task.status === 'Pending' || task.status === 'InProgress')
  const file = { session_id: id, created_at: '2025-01-01T00:00:00.000Z', updated_at: finished, session: { session_id: id, tasks, current_index: current === -1 ? tasks.length : current } }
  return JSON.stringify(file, null, 2) + '\n'
}

/**
 * The command-line tests' folder: active `old`, `failed` (finished 100 days ago), `recent` (2 days),
 * `pending`; archived `gone` (400 days) and `kept` (50 days). Marked as a taskvault folder, as
 * one a server has used: tests plant unreadable files in it, which an unmarked folder is refused for.
 */
export async function preparedFolder (t: TestContext, prefix = 'taskvault-cli-'): Promise<string> {
  const dir = join(await tempDir(t, prefix), 'tasks')
  await mkdir(join(dir, 'archive'), { recursive: true, mode: 0o700 })
  const files: Record<string, string> = {
    'old.json': storedSession('old', ['Completed', 'Completed'], daysAgo(100)),
    'failed.json': storedSession('failed', ['Completed', 'Failed'], daysAgo(100)),
    'recent.json': storedSession('recent', ['Completed'], daysAgo(2)),
    'pending.json': storedSession('pending', ['Completed', 'Pending'], daysAgo(100)),
    'archive/gone.json': storedSession('gone', ['Completed'], daysAgo(400)),
    'archive/kept.json': storedSession('kept', ['Failed'], daysAgo(50))
  }
  for (const [name, text] of Object.entries(files)) await writeFile(join(dir, name), text, { mode: 0o600 })
  await markAsTaskvault(dir)
  return dir
}
