import { lstat, open, rename, unlink } from 'node:fs/promises'
import { dirname, resolve } from 'node:path'
import { Writable } from 'node:stream'
import { nodeFs } from '../../services/fs-seam.js'
import { fsyncDir } from '../../services/session-files.js'
import { writeTarGz, type TarFile } from '../../services/tar.js'
import { CommandFailedError, UsageError } from '../args.js'
import { assertFolder, checkStoredFile, listStoredFiles, storageDir, type StoredFile } from '../folder.js'
import { COMMON_HELP, type Command } from '../command.js'
import { formatBytes } from './stats.js'

/** Rounds of listing again when files moved during the backup (a live server archiving or bringing back). */
const MAX_ROUNDS = 5

export const backupCommand: Command = {
  name: 'backup',
  summary: 'write a tar.gz snapshot of the active and archived sessions',
  help: `Usage: taskvault backup [dir] --out FILE.tar.gz [--force] [--json]

Writes every session file of the folder and of its archive/ into FILE.tar.gz (paths relative
to the folder: <id>.json and archive/<name>.json). Each file is read once, whole, so every
session in the backup is a complete saved state; a session that moves while the backup runs is
taken from where it moved to. Files that do not load are left out and reported. Safe while a
server runs. The backup is written to a temp file, fsynced, then renamed into place.
Any tar reads it: tar -tzvf FILE.tar.gz

Options:
  -o, --out FILE  where to write the backup (required)
  --force         replace FILE if it exists

Exit status 1 when a file was left out.

${COMMON_HELP}`,
  options: { out: { type: 'string', short: 'o' }, force: { type: 'boolean', default: false } },
  positionals: { min: 0, max: 1, names: 'dir' },
  async run (args, { settings, keyring }) {
    const dir = storageDir(args.positionals[0], settings)
    if (typeof args.values.out !== 'string' || args.values.out === '') throw new UsageError('--out FILE.tar.gz is required')
    const out = resolve(args.values.out)
    await assertFolder(dir)
    if (args.values.force !== true && await lstat(out).then(() => true, () => false)) {
      throw new CommandFailedError(`${out} exists; give --force to replace it`)
    }
    const counts = { active: 0, archived: 0, bytes: 0 }
    const skipped: Array<{ file: string, reason: string }> = []
    async function * files (): AsyncGenerator<TarFile> {
      const taken = new Set<string>()
      for (let round = 1; round <= MAX_ROUNDS; round++) {
        let moved = 0
        for (const stored of await listTwice(dir)) {
          if (taken.has(stored.rel)) continue
          const checked = await checkStoredFile(stored, keyring)
          if (checked.ok === null) {
            moved++
            continue
          }
          taken.add(stored.rel)
          if (!checked.ok) {
            skipped.push({ file: stored.rel, reason: checked.reason })
            continue
          }
          counts[stored.archived ? 'archived' : 'active']++
          counts.bytes += checked.data.length
          yield { name: stored.rel, data: checked.data, mtime: checked.mtime }
        }
        if (moved === 0) return
      }
    }
    const temp = `${out}.${process.pid}.tmp`
    const handle = await open(temp, 'wx', 0o600)
    try {
      await writeTarGz(files(), new Writable({
        write: (chunk: Buffer, _encoding, done) => { handle.write(chunk).then(() => done(), done) },
        // Durable before the rename makes it the backup.
        final: (done) => { handle.sync().then(() => done(), done) }
      }))
      await handle.close()
      await rename(temp, out)
    } catch (err) {
      await handle.close().catch(() => {})
      await unlink(temp).catch(() => {})
      throw err
    }
    await fsyncDir(nodeFs, dirname(out))
    const compressed = (await lstat(out)).size
    const total = counts.active + counts.archived
    const lines = [`Backed up ${total} sessions (${counts.active} active, ${counts.archived} archived; ${formatBytes(counts.bytes)}) to ${out} (${formatBytes(compressed)})`]
    for (const { file, reason } of skipped) lines.push(`❌ left out ${file}: ${reason}`)
    return {
      code: skipped.length > 0 ? 1 : 0,
      json: { dir, out, files: total, active: counts.active, archived: counts.archived, bytes: counts.bytes, compressed_bytes: compressed, skipped },
      lines
    }
  }
}

/**
 * The folder and archive/ listed, then listed again: a session moving between them (archived,
 * or brought back) between two listings is then in at least one of them.
 */
async function listTwice (dir: string): Promise<StoredFile[]> {
  const first = await listStoredFiles(dir)
  const second = await listStoredFiles(dir)
  const byPath = new Map(first.map((stored) => [stored.rel, stored]))
  for (const stored of second) if (!byPath.has(stored.rel)) byPath.set(stored.rel, stored)
  return [...byPath.values()].sort((a, b) => (a.rel < b.rel ? -1 : a.rel > b.rel ? 1 : 0))
}
