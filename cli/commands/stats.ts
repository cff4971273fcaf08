import { lstat, readdir } from 'node:fs/promises'
import { join } from 'node:path'
import { progressOf } from '../../services/session/session.js'
import { FileSessionStore } from '../../services/store/file-store.js'
import { assertFolder, checkStoredFile, listStoredFiles, storageDir } from '../folder.js'
import { COMMON_HELP, type Command } from '../command.js'

export const statsCommand: Command = {
  name: 'stats',
  summary: "the stats endpoint's figures, from the files, with storage used",
  help: `Usage: taskvault stats [dir] [--json]

Reads every session file and prints what GET /api/v1/tasks/stats would show for the folder:
session and task counts (active sessions; archived ones are counted apart), the bytes of
active and archived files, how many files cannot be loaded, and the storage used by everything
under the folder (corrupt/ included). Read-only; safe while a server runs.

${COMMON_HELP}`,
  options: {},
  positionals: { min: 0, max: 1, names: 'dir' },
  async run (args, { settings, keyring }) {
    const dir = storageDir(args.positionals[0], settings)
    await assertFolder(dir)
    const counts = {
      total_sessions: 0,
      active_sessions: 0,
      completed_sessions: 0,
      total_tasks: 0,
      completed_tasks: 0,
      failed_tasks: 0,
      pending_tasks: 0,
      in_progress_tasks: 0
    }
    const storage = { dir, bytes: 0, files: 0, archive_bytes: 0, archive_files: 0, failed_loads: 0, corrupt_files: 0, used_bytes: 0 }
    const archivedIds = new Set<string>()
    for (const stored of await listStoredFiles(dir)) {
      const checked = await checkStoredFile(stored, keyring)
      if (checked.ok === null) continue
      if (!checked.ok) {
        storage.failed_loads++
        continue
      }
      if (stored.archived) {
        archivedIds.add(checked.file.session_id)
        storage.archive_bytes += checked.data.length
        storage.archive_files++
        continue
      }
      const progress = progressOf(checked.file.session.tasks)
      counts.total_sessions++
      if (progress.all_done) counts.completed_sessions++
      else counts.active_sessions++
      counts.total_tasks += progress.total
      counts.completed_tasks += progress.completed
      counts.failed_tasks += progress.failed
      counts.pending_tasks += progress.pending
      counts.in_progress_tasks += progress.in_progress
      storage.bytes += checked.data.length
      storage.files++
    }
    storage.corrupt_files = (await readdir(join(dir, 'corrupt')).catch(() => [])).length
    storage.used_bytes = await usedBytes(dir)
    // The same free-space figures as GET /stats, from the same statfs.
    const space = await new FileSessionStore({ dir }).space()
    const json = { ...counts, archived_sessions: archivedIds.size, storage: { ...storage, ...space } }
    const lines = [
      `storage folder      ${dir}`,
      `sessions            ${counts.total_sessions} (${counts.active_sessions} active, ${counts.completed_sessions} completed)`,
      `tasks               ${counts.total_tasks} (${counts.completed_tasks} completed, ${counts.failed_tasks} failed, ${counts.pending_tasks} pending, ${counts.in_progress_tasks} in progress)`,
      `archived sessions   ${archivedIds.size} (${storage.archive_files} files, ${formatBytes(storage.archive_bytes)})`,
      `session files       ${storage.files} (${formatBytes(storage.bytes)})`,
      `unloadable files    ${storage.failed_loads}${storage.corrupt_files > 0 ? `; ${storage.corrupt_files} set aside in corrupt/` : ''}`,
      `storage used        ${formatBytes(storage.used_bytes)}`,
      `filesystem free     ${formatBytes(space.free_bytes)} of ${formatBytes(space.total_bytes)} (${(space.free_ratio * 100).toFixed(1)}%)`
    ]
    return { code: 0, json, lines }
  }
}

/** Bytes of every regular file under `dir`, without following symlinks. */
async function usedBytes (dir: string): Promise<number> {
  let total = 0
  for (const entry of await readdir(dir, { withFileTypes: true }).catch(() => [])) {
    const path = join(dir, entry.name)
    if (entry.isDirectory()) total += await usedBytes(path)
    else if (entry.isFile()) total += (await lstat(path).catch(() => ({ size: 0 }))).size
  }
  return total
}

export function formatBytes (bytes: number): string {
  if (bytes < 1024) return `${bytes} B`
  const units = ['KB', 'MB', 'GB', 'TB']
  let value = bytes
  let unit = -1
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024
    unit++
  }
  return `${value.toFixed(1)} ${units[unit] ?? 'TB'}`
}
