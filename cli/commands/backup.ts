import { link, lstat, open, readdir, realpath, rename, stat, unlink } from 'node:fs/promises'
import { basename, dirname, isAbsolute, join, relative, resolve, sep } from 'node:path'
import { backupEntry, backupFileName, backupTime, emptyCounts } from '../../services/backup/backup.js'
import { Writable } from 'node:stream'
import { nodeFs } from '../../services/store/fs-seam.js'
import { pidAlive } from '../../services/pid.js'
import { fsyncDir } from '../../services/store/session-files.js'
import { writeTarGz, type TarFile } from '../../services/backup/tar.js'
import { CommandFailedError, UsageError, daysOption } from '../args.js'
import { assertFolder, folderKeys, ignoredByServer, readSettled, storageDir, type StoredFile } from '../folder.js'
import { COMMON_HELP, type Command } from '../command.js'
import { assertTargetNamed } from '../database.js'
import { formatBytes } from './stats.js'

export const backupCommand: Command = {
  name: 'backup',
  summary: 'write a tar.gz snapshot of the active and archived sessions',
  help: `Usage: taskvault backup [dir] --out FILE.tar.gz [--force] [--json]
       taskvault backup [dir] --out-dir DIR [--keep-days N] [--json]

Writes every session file of the folder and of its archive/ into FILE.tar.gz (paths relative
to the folder: <id>.json and archive/<name>.json). Each file is read once, whole, so every
session in the backup is a complete saved state; a session that moves while the backup runs is
in it once: as it was read, or from where it moved to when it moved before it was read. An
archived copy that an active file of its session hides (the server never shows it) is left out
and reported. Files that do not load are left out and reported. Safe while a server runs. The
backup is written to a temp file, fsynced, then put in place, never over a file another backup
wrote there while this one ran (--out then fails, unless --force; --out-dir takes the next name).
Any tar reads it: tar -tzvf FILE.tar.gz

Options:
  -o, --out FILE    where to write the backup
  --force           replace FILE if it exists
  --out-dir DIR     write DIR/tasks_YYYYMMDD.tar.gz instead (UTC date; tasks_YYYYMMDD_HHMMSS.tar.gz
                    when that exists, then tasks_YYYYMMDD_HHMMSS_2.tar.gz...), the seed's daily name
  --keep-days N     with --out-dir: then delete this command's backups in DIR made more than
                    N days ago (by the date in their name); no other file is touched, and
                    none is deleted when this backup left a file out

A temp file left by an earlier backup to the same name (or, with --out-dir, to any of its
names) that was killed is deleted once this one is written: one whose process is gone from
this host and which nobody has written to for TASK_LOCK_STALE_MS.

Sealed files are carried as they are. When TASK_ENCRYPTION_KEYS's key under a kid opens none of
the files sealed under it (a wrong key, not damaged files) nothing is written; a folder with no
session and no .taskvault marker (a volume that did not mount) is refused too.

Exit status 1 when a file was left out.

${COMMON_HELP}`,
  options: { out: { type: 'string', short: 'o' }, force: { type: 'boolean', default: false }, 'out-dir': { type: 'string' }, 'keep-days': { type: 'string' } },
  positionals: { min: 0, max: 1, names: 'dir' },
  async run (args, { settings, keyring }) {
    assertTargetNamed(settings, args.positionals.length > 0, 'back the database up with pg_dump, taskvault export or GET /api/v1/tasks/backup (or give a folder)')
    const dir = storageDir(args.positionals[0], settings)
    const { out: chosen, outDir, keepDays, made } = await target(args.values)
    const force = args.values.force === true
    await assertFolder(dir)
    await refuseInside(dir, dirname(chosen))
    // --out-dir chose a free name already (and takes the next one if another backup takes it first).
    if (!force && outDir === null && await exists(chosen)) {
      throw new CommandFailedError(`${chosen} exists; give --force to replace it`)
    }
    const counts = emptyCounts()
    const { proofs, marked } = await folderKeys(dir, keyring)
    const skipped: Array<{ file: string, reason: string }> = []
    /** Files not named like a session (`my notes.json`): no session, so none is missing (as validate and seal judge them). */
    const ignored: Array<{ file: string, reason: string }> = []
    async function * files (): AsyncGenerator<TarFile> {
      /** Sessions taken, and whether from their active file. */
      const takenActive = new Map<string, boolean>()
      // Active files first: an archived copy read after its session's active file is either
      // hidden by it (the server shows the active one), or that file archived since it was read.
      const skip = async (stored: StoredFile): Promise<boolean> => {
        const before = stored.sessionId === null ? undefined : takenActive.get(stored.sessionId)
        // A session is in the backup once, as it was when read: not again from where it moved
        // to (archived, or brought back) while the backup ran. Several archived copies of a
        // session with no active file are all in the folder, and all taken.
        if (before === true && stored.archived) {
          if (await exists(join(dir, `${stored.sessionId as string}.json`))) ignored.push({ file: stored.rel, reason: 'an archived copy hidden by the active session file (the server shows that file, whichever is newer)' })
          return true
        }
        return before === false && !stored.archived
      }
      for await (const { stored, checked } of readSettled(dir, keyring, skip)) {
        proofs.note(stored, checked)
        // A file sealed under a key this tool lacks is still a whole session: carried as it is.
        if (!checked.ok && checked.keyMissing !== true) {
          (ignoredByServer(stored) ? ignored : skipped).push({ file: stored.rel, reason: checked.reason })
          continue
        }
        // Only a file carried takes its session: one left out (a symlink, a corrupt file) hides nothing.
        if (stored.sessionId !== null && !takenActive.has(stored.sessionId)) takenActive.set(stored.sessionId, !stored.archived)
        yield backupEntry(counts, stored.rel, stored.archived, checked.data, checked.mtime)
      }
      // Thrown before the rename: no backup is written, and none is deleted.
      const wrongKey = proofs.failure(`no backup was written, and ${outDir === null ? chosen : `the backups in ${outDir}`} ${outDir === null ? 'is' : 'are'} as before`)
      if (wrongKey !== null) throw wrongKey
      // No session and no marker: a volume that did not mount, a mistyped path; an empty backup would only replace good ones.
      if (counts.active + counts.archived === 0 && skipped.length === 0 && !marked) {
        throw new CommandFailedError(`${dir} holds no session and no .taskvault marker: it is not a storage folder taskvault has used (a volume that did not mount?); no backup was written`)
      }
    }
    // With the time: a run with a killed one's pid (pid 1 in a container) never meets its leftover.
    const temp = `${chosen}.${process.pid}.${Date.now()}.tmp`
    let out = chosen
    const handle = await open(temp, 'wx', 0o600)
    try {
      await writeTarGz(files(), new Writable({
        write: (chunk: Buffer, _encoding, done) => { handle.write(chunk).then(() => done(), done) },
        // Durable before the rename makes it the backup.
        final: (done) => { handle.sync().then(() => done(), done) }
      }))
      await handle.close()
      out = await place(temp, chosen, outDir === null ? null : { outDir, made }, force)
    } catch (err) {
      await handle.close().catch(() => {})
      await unlink(temp).catch(() => {})
      // Said of the backup: the bare errno names neither the file nor that nothing was left.
      const code = (err as NodeJS.ErrnoException).code
      if (code === 'ENOSPC' || code === 'EDQUOT') throw new CommandFailedError(`no space left to write the backup ${chosen} (${code}); its temp file was removed, and ${chosen} is as it was`)
      throw err
    }
    await fsyncDir(nodeFs, dirname(out))
    const compressed = (await lstat(out)).size
    const leftovers = await deleteLeftovers(dirname(out), outDir === null ? (name) => name === basename(out) : (name) => madeAt(name) !== null, settings.TASK_LOCK_STALE_MS)
    // Only once this backup is durable, and whole, may older ones go: one that left files out may lack what they hold.
    const pruning = outDir !== null && keepDays !== undefined
    const deleted = pruning && skipped.length === 0 ? await deleteOlderBackups(outDir, keepDays, out) : []
    const total = counts.active + counts.archived
    // Reported by path, as the folder lists them (files were read active ones first).
    for (const list of [ignored, skipped]) list.sort((a, b) => (a.file < b.file ? -1 : a.file > b.file ? 1 : 0))
    const lines = [`Backed up ${total} sessions (${counts.active} active, ${counts.archived} archived; ${formatBytes(counts.bytes)}) to ${out} (${formatBytes(compressed)})`]
    for (const { file, reason } of ignored) lines.push(`⚠️ ignored ${file}: ${reason}`)
    for (const { file, reason } of skipped) lines.push(`❌ left out ${file}: ${reason}`)
    if (pruning && skipped.length > 0) lines.push(`Deleted no older backup: this one left ${skipped.length} file${skipped.length === 1 ? '' : 's'} out`)
    else if (keepDays !== undefined) lines.push(`Deleted ${deleted.length} backups older than ${keepDays} days${deleted.length > 0 ? `: ${deleted.join(', ')}` : ''}`)
    if (leftovers.length > 0) lines.push(`Deleted ${leftovers.length} temp files left by killed backups: ${leftovers.join(', ')}`)
    return {
      code: skipped.length > 0 ? 1 : 0,
      json: { dir, out, files: total, active: counts.active, archived: counts.archived, bytes: counts.bytes, compressed_bytes: compressed, skipped, ignored, ...(keepDays !== undefined && { deleted }), leftovers },
      lines
    }
  }
}

/** Where the backup goes: --out FILE, or a seed-style name in --out-dir (with --keep-days). */
async function target (values: Record<string, string | boolean | undefined>): Promise<{ out: string, outDir: string | null, keepDays: number | undefined, made: Date }> {
  const made = new Date()
  const file = values.out
  const dir = values['out-dir']
  const keepDays = daysOption(values, 'keep-days', 1)
  if (file !== undefined && dir !== undefined) throw new UsageError('give either --out FILE.tar.gz or --out-dir DIR, not both')
  if (keepDays !== undefined && dir === undefined) throw new UsageError('--keep-days needs --out-dir DIR (the folder whose old backups it deletes)')
  if (typeof dir === 'string' && dir !== '') {
    const outDir = resolve(dir)
    if ((await lstat(outDir).catch(() => null))?.isDirectory() !== true) throw new CommandFailedError(`${outDir} is not a folder`)
    return { out: await freeName(outDir, made), outDir, keepDays, made }
  }
  if (typeof file !== 'string' || file === '') throw new UsageError('--out FILE.tar.gz or --out-dir DIR is required')
  const out = resolve(file)
  // Said here: the write would fail naming its temp file (ENOENT, EISDIR) rather than what is wrong.
  const folder = await stat(dirname(out)).catch(() => null)
  if (folder === null) throw new CommandFailedError(`the folder ${dirname(out)} does not exist; create it, or give --out a file in a folder that exists`)
  if (!folder.isDirectory()) throw new CommandFailedError(`${dirname(out)} is not a folder`)
  const existing = await lstat(out).catch(() => null)
  if ((await stat(out).catch(() => null))?.isDirectory() === true) throw new CommandFailedError(`${out} is a folder; give --out a file name, or --out-dir ${out}`)
  // The backup is renamed into place: over a device, a FIFO or a link, that would replace the
  // node itself (`--out /dev/stdout --force` would delete the device) instead of writing to it.
  if (existing !== null && !existing.isFile()) throw new CommandFailedError(`${out} is not a regular file (a link, a device or a pipe); give --out the path of a new or existing regular file`)
  return { out, outDir: null, keepDays, made }
}

/**
 * A backup is never written inside the storage folder it copies: there it would replace a session
 * file (`--out DIR/s1.json --force`), and the server would set the archive aside as one that does
 * not read. Compared by real paths, so no link or `..` gets round it.
 */
async function refuseInside (dir: string, outFolder: string): Promise<void> {
  const [root, folder] = await Promise.all([realpath(dir), realpath(outFolder)])
  const rel = relative(root, folder)
  if (rel === '' || (rel !== '..' && !rel.startsWith(`..${sep}`) && !isAbsolute(rel))) {
    throw new CommandFailedError(`the backup would be written inside the storage folder ${dir}; write it somewhere else`)
  }
}

/** A repeat of a backup name within one second: `tasks_YYYYMMDD_HHMMSS_<n>.tar.gz`, n from 2. */
const REPEATED_BACKUP = /^(tasks_\d{8}_\d{6})_([2-9]|[1-9]\d+)\.tar\.gz$/u

/**
 * The first of the seed's daily name, then the name with the time, then that time with _2, _3...
 * that is not in `dir`: a second backup in the same second neither fails nor replaces the first.
 */
async function freeName (dir: string, now: Date): Promise<string> {
  const daily = join(dir, backupFileName(now))
  if (!await exists(daily)) return daily
  const timed = backupFileName(now, true)
  let name = join(dir, timed)
  for (let n = 2; await exists(name); n++) name = join(dir, timed.replace(/\.tar\.gz$/u, `_${n}.tar.gz`))
  return name
}

/**
 * Puts the finished backup `temp` at `out` without replacing a file put there since the name was
 * chosen (another backup running at the same time): link, which fails where a name exists
 * (rename would replace it), then unlink of the temp file. With --out-dir (`named`) the next free
 * name is taken then; with --out the run is refused as if the file had been there at its start.
 * `force` replaces, as asked. The caller fsyncs the folder. Returns where the backup is.
 */
async function place (temp: string, out: string, named: { outDir: string, made: Date } | null, force: boolean): Promise<string> {
  if (force && named === null) {
    await rename(temp, out)
    return out
  }
  let name = out
  for (;;) {
    try {
      await linkOrRename(temp, name)
      return name
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err
      if (named === null) throw new CommandFailedError(`${out} exists (written while this backup ran); give --force to replace it`)
      name = await freeName(named.outDir, named.made)
    }
  }
}

/** File systems without hard links (FAT, exFAT, some network shares) answer link with one of these. */
const NO_LINKS = new Set(['EPERM', 'ENOTSUP', 'EOPNOTSUPP', 'ENOSYS', 'EXDEV'])

/**
 * Moves `temp` to `name`, failing with EEXIST where `name` exists: link then unlink. Where the
 * file system has no hard links, a rename after a check of the name (a narrow window, as before).
 */
async function linkOrRename (temp: string, name: string): Promise<void> {
  try {
    await link(temp, name)
  } catch (err) {
    if (!NO_LINKS.has((err as NodeJS.ErrnoException).code ?? '')) throw err
    if (await exists(name)) throw Object.assign(new Error(`${name} exists`), { code: 'EEXIST' })
    await rename(temp, name)
    return
  }
  await unlink(temp)
}

/** When a backup this command named was made (any of freeName's names); null for any other name. */
function madeAt (name: string): Date | null {
  const repeated = REPEATED_BACKUP.exec(name)
  return backupTime(repeated === null ? name : `${repeated[1] as string}.tar.gz`)
}

/**
 * Deletes the regular files in `dir` named as this command names backups whose name says they
 * were made more than `days` days ago; never `keep` (just written), never anything else.
 */
async function deleteOlderBackups (dir: string, days: number, keep: string): Promise<string[]> {
  const cutoff = Date.now() - days * 86_400_000
  const deleted: string[] = []
  for (const entry of await readdir(dir, { withFileTypes: true })) {
    const made = madeAt(entry.name)
    if (made === null || !entry.isFile() || join(dir, entry.name) === keep || made.getTime() >= cutoff) continue
    await unlink(join(dir, entry.name))
    deleted.push(entry.name)
  }
  if (deleted.length > 0) await fsyncDir(nodeFs, dir)
  return deleted.sort()
}

/** A backup's temp file: `<backup name>.<pid>.<ms>.tmp` (see run). */
const TEMP = /^(.+)\.(\d+)\.\d+\.tmp$/u

/**
 * Deletes the temp files in `dir` of backups to names `ours` accepts whose writer was killed: its
 * pid runs no more on this host, and nobody wrote to the file for `staleMs` (a backup on another
 * host sharing the folder, whose pid means nothing here, is still writing to its own).
 */
async function deleteLeftovers (dir: string, ours: (name: string) => boolean, staleMs: number): Promise<string[]> {
  const deleted: string[] = []
  for (const entry of await readdir(dir, { withFileTypes: true })) {
    const temp = TEMP.exec(entry.name)
    if (temp === null || !entry.isFile() || !ours(temp[1] as string)) continue
    const pid = Number(temp[2])
    if (pid === process.pid || pidAlive(pid)) continue
    const written = await lstat(join(dir, entry.name)).then((stats) => stats.mtimeMs, () => null)
    if (written === null || Date.now() - written < staleMs) continue
    await unlink(join(dir, entry.name)).catch((err: NodeJS.ErrnoException) => { if (err.code !== 'ENOENT') throw err })
    deleted.push(entry.name)
  }
  if (deleted.length > 0) await fsyncDir(nodeFs, dir)
  return deleted.sort()
}

async function exists (path: string): Promise<boolean> {
  return lstat(path).then(() => true, () => false)
}
