import { createHash } from 'node:crypto'
import { constants } from 'node:fs'
import { lstat, mkdir, open, stat, type FileHandle } from 'node:fs/promises'
import { join, resolve } from 'node:path'
import { Readable } from 'node:stream'
import { nodeFs } from '../../services/store/fs-seam.js'
import { ARCHIVED_FILE, SESSION_FILE, TEMP_FILE, fsyncDir, parseSessionFile, sessionText, tempNames, writeAndRename } from '../../services/store/session-files.js'
import { MARKER_FILE } from '../../services/store/storage-folder.js'
import { LOCK_FILE } from '../../services/store/storage-lock.js'
import { KeyUnavailableError, SealNotOpenedError } from '../../services/errors.js'
import { readTarGz, type TarEntry } from '../../services/backup/tar.js'
import { CommandFailedError } from '../args.js'
import { kidRecord, type Keyring } from '../../services/store/keyring.js'
import { assertNoCaseTwins, checkStoredFile, folderSessionFiles, clearOf, keyWarnings, needKey, sameState, storageDir, wholeFile, withWriteLock, writing, type KeysNeeded } from '../folder.js'
import type { SessionFile } from '../../services/session/session.js'
import { COMMON_HELP, type Command, type CommandContext, type CommandResult } from '../command.js'
import { assertTargetNamed } from '../database.js'

/**
 * The backup, opened once: every pass (check, plan, write) reads the same file from its start,
 * so one put in its place meanwhile (a backup run again with --force) is never half taken.
 */
interface BackupFile {
  path: string
  read: () => Readable
}

async function openBackup (path: string): Promise<{ backup: BackupFile, handle: FileHandle }> {
  // Not blocking: opening a FIFO with no writer would wait for ever before it could be refused.
  const handle = await open(path, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK).catch((err: NodeJS.ErrnoException) => {
    // ELOOP: a symlink, which O_NOFOLLOW refuses; the rest say what is wrong as they are.
    if (err.code === 'ENOENT') throw new CommandFailedError(`${path}: no such file`)
    if (err.code === 'EACCES' || err.code === 'EPERM') throw new CommandFailedError(`${path} cannot be read (${err.code})`)
    if (err.code !== 'ELOOP') throw new CommandFailedError(`${path} cannot be opened (${err.code ?? err.message})`)
    return null
  })
  if (handle === null || !(await handle.stat()).isFile()) {
    await handle?.close()
    throw new CommandFailedError(`${path} is not a file`)
  }
  return { backup: { path, read: () => Readable.from(chunks(handle), { objectMode: false }) }, handle }
}

const CHUNK_BYTES = 64 * 1024

/** The file's bytes from its start, by position: each pass its own, the handle left open. */
async function * chunks (handle: FileHandle): AsyncGenerator<Buffer> {
  for (let position = 0; ;) {
    const buffer = Buffer.allocUnsafe(CHUNK_BYTES)
    const { bytesRead } = await handle.read(buffer, 0, CHUNK_BYTES, position)
    if (bytesRead === 0) return
    position += bytesRead
    yield buffer.subarray(0, bytesRead)
  }
}

/** One session file of the backup, checked, and what restoring it would do. */
interface Planned {
  rel: string
  sessionId: string
  archived: boolean
  digest: string
  action: 'write' | 'unchanged'
  /** The kid it is sealed under when TASK_ENCRYPTION_KEYS does not hold it: carried as it is. */
  missingKid: string | null
}

interface Conflict {
  file: string
  reason: string
  /** Another copy in the folder, which the restore does not write, would be shown instead. */
  hidden?: true
}

export const restoreCommand: Command = {
  name: 'restore',
  summary: 'put the sessions of a backup back into a storage folder',
  help: `Usage: taskvault restore FILE.tar.gz [dir] [--force] [--json]

Checks every session file in the backup as the server's restore would, then writes each one
back to where it was (<dir>/<id>.json or <dir>/archive/<name>.json) with the same durable
sequence as the server's saves (temp file, fsync, rename, fsync the folder). Nothing is written
unless the whole backup checks out. A file in the folder that is newer than the backup's copy
(a later updated_at), or that cannot be read, is a conflict; so is a newer copy of the same
session elsewhere in the folder (archived since the backup, say): the restore is refused, writing
nothing, unless --force. Files identical to the backup's are left alone, and so are those with the
same updated_at that hold the same session in another form (sealed since under a new key by
'taskvault seal'); one with the same updated_at and other content, or that cannot be compared
(one of the two sealed under a key TASK_ENCRYPTION_KEYS does not hold), is a conflict too. The
folder is created if missing. Refused while a server holds the folder.

A file sealed under a key TASK_ENCRYPTION_KEYS does not hold (an archived file under a retired
key, say) is restored as it is, judged by its clear id and updated_at, with a warning naming the
kid: an archived one is served once the key is back; an active one stops the server's start
until TASK_ENCRYPTION_KEYS holds its key again.

Reads the backups of 'taskvault backup', of GET /api/v1/tasks/backup, and tars made by hand:
when every entry sits under one common folder (tar -czf b.tar.gz data/tasks/*.json gives
data/tasks/<id>.json), that folder is taken as the storage folder (and its archive/ as
archive/). A tar of a whole storage folder (tar -czf b.tar.gz data/tasks) also holds files that
are no session: its .taskvault marker and .taskvault.lock, the server's temp files
(.<id>.<pid>.<n>.tmp) and corrupt/. Those are skipped, and counted in the output, as is a .json
file whose name is not a session id (my notes.json), which the server never reads; the restore
marks the folder itself. Absolute paths, '..', links and any other path are refused.

Options:
  --force     overwrite newer or unreadable files too

Exit status 1 on conflicts (without --force) or a damaged backup.

${COMMON_HELP}`,
  options: { force: { type: 'boolean', default: false } },
  positionals: { min: 1, max: 2, names: 'FILE.tar.gz' },
  async run (args, context) {
    const { settings } = context
    assertTargetNamed(settings, args.positionals.length > 1, 'restore into it with pg_restore, or taskvault import from a folder (or give a folder)')
    const path = resolve(args.positionals[0] as string)
    const dir = storageDir(args.positionals[1], settings)
    const force = args.values.force === true
    const { backup, handle } = await openBackup(path)
    try {
      return await restoreFrom(backup, dir, force, context)
    } finally {
      await handle.close()
    }
  }
}

async function restoreFrom (backup: BackupFile, dir: string, force: boolean, { settings, keyring, warn }: CommandContext): Promise<CommandResult> {
  // A symlink to a folder is one, as the server takes it; a link to nothing is not (nor is it made).
  const folder = await stat(dir).catch(() => null)
  if (folder !== null ? !folder.isDirectory() : await lstat(dir).then(() => true, () => false)) throw new CommandFailedError(`${dir} is not a folder; give the storage folder to restore into`)
  // A damaged backup (or not a backup at all) is told before the folder is created, marked or locked.
  for await (const entry of checkedEntries(backup, keyring)) void entry
  return withWriteLock(dir, settings, keyring, true, async (store) => {
    // Never read or written through: the server ignores an archive/ that is not a real folder.
    const archive = await lstat(join(dir, 'archive')).catch(() => null)
    if (archive !== null && !archive.isDirectory()) throw new CommandFailedError(`${join(dir, 'archive')} is not a real folder (a symlink?), so the server reads no archived session from it; make it a folder of the storage folder, then restore`)
    const present = await folderSessionFiles(dir)
    const { planned, conflicts, skipped } = await plan(backup, dir, present, keyring)
    if (store.caseless) assertNoCaseTwins(dir, planned.map((item) => item.rel), present, 'the backup')
    // --force overwrites what the backup names; a copy elsewhere that would hide the restored one stays, so it cannot help.
    const hiding = conflicts.filter((conflict) => conflict.hidden === true)
    if (hiding.length > 0 && force) {
      const lines = hiding.map(({ file, reason }) => `❌ ${file}: ${reason}`)
      lines.push(`Refused: ${hiding.length} restored files would be hidden by other copies in ${dir}, which --force does not touch; move those copies out first. Nothing was written`)
      return { code: 1, json: { backup: backup.path, dir, restored: 0, unchanged: 0, conflicts }, lines }
    }
    if (conflicts.length > 0 && !force) {
      const lines = conflicts.map(({ file, reason }) => `❌ ${file}: ${reason}`)
      lines.push(`Refused: ${conflicts.length} files in ${dir} would be overwritten; nothing was written (give --force to overwrite them)`)
      return { code: 1, json: { backup: backup.path, dir, restored: 0, unchanged: 0, conflicts }, lines }
    }
    const written = await write(backup, dir, planned, () => store.confirmLock())
    const unchanged = planned.length - written
    const needsKeys = keysNeeded(planned)
    const lines = [`Restored ${written} files into ${dir} (${unchanged} already there: the same bytes, or the same session under another key${force && conflicts.length > 0 ? `, ${conflicts.length} newer or unreadable copies in the folder overridden` : ''})`]
    if (skipped.length > 0) lines.push(`Skipped ${skipped.length} files of the backed-up folder that hold no session (its .taskvault marker or lock, temp files, corrupt/, .json files not named like a session); ${dir} has its own marker`)
    for (const line of keyWarnings(needsKeys, dir)) warn(line)
    return { code: 0, json: { backup: backup.path, dir, restored: written, unchanged, conflicts, forced: force && conflicts.length > 0, needs_keys: needsKeys, skipped }, lines }
  })
}

/** Reads the whole backup, checking every entry, and compares each with the folder. Writes nothing. */
async function plan (backup: BackupFile, dir: string, present: string[], keyring: Keyring | null): Promise<{ planned: Planned[], conflicts: Conflict[], skipped: string[] }> {
  const planned: Planned[] = []
  const conflicts: Conflict[] = []
  const skipped: string[] = []
  const copies = copiesBySession(present)
  const restoredAt = new Map<string, string>()
  for await (const { entry, rel, archived, sessionId, updatedAt, file, missingKid } of checkedEntries(backup, keyring, skipped)) {
    const path = join(dir, rel)
    // Not a conflict --force settles: the rename would fail on it (a folder) or replace what is not
    // a session (a link, a FIFO) midway through the restore, after other files were written.
    if (!await isRegular(path)) throw new CommandFailedError(`${path} is not a regular file (a folder, a link or a device) where the backup restores ${rel}; move it away, then restore again; nothing was written`)
    const current = await checkStoredFile({ rel, path, archived, sessionId, regular: true }, keyring)
    // One sealed under a missing key is whole: judged by its bytes and clear updated_at.
    const whole = wholeFile(current)
    let action: Planned['action'] = 'write'
    if (current.ok === false && whole === null) conflicts.push({ file: rel, reason: `the file in the folder cannot be read (${current.reason})` })
    else if (whole !== null) {
      if (whole.data.equals(entry.data)) action = 'unchanged'
      else if (Date.parse(whole.updatedAt) > Date.parse(updatedAt)) {
        conflicts.push({ file: rel, reason: `the folder's copy is newer (updated_at ${whole.updatedAt}, backup ${updatedAt})` })
      } else if (Date.parse(whole.updatedAt) === Date.parse(updatedAt)) {
        // The same stamp: the same state in another form (sealed since under a new key) is kept as it
        // is; other content, or a copy that cannot be opened to tell, is not overwritten unasked.
        const same = sameState({ data: whole.data, file: current.ok === true ? current.file : null }, { data: entry.data, file })
        if (same === true) action = 'unchanged'
        else {
          conflicts.push({
            file: rel,
            reason: same === false
              ? `the folder's copy holds other content under the same updated_at (${updatedAt})`
              : `the folder's copy differs from the backup's under the same updated_at (${updatedAt}), and ${file === null ? `the backup's is sealed under key '${missingKid ?? ''}'` : `the folder's is sealed under key '${current.ok === false && current.keyMissing === true ? current.kid : ''}'`}, which TASK_ENCRYPTION_KEYS does not hold, so they cannot be compared`
          })
        }
      }
    }
    planned.push({ rel, sessionId, archived, digest: digest(entry.data), action, missingKid })
    restoredAt.set(rel, updatedAt)
  }
  // The same session may sit elsewhere in the folder (archived since the backup, or brought back):
  // a newer copy there, or an active one that would hide a restored archive, is a conflict too.
  // Copies the backup itself holds are replaced by it, so they are no conflict.
  for (const { rel, sessionId, archived } of planned) {
    const updatedAt = restoredAt.get(rel) as string
    for (const other of copies.get(sessionId) ?? []) {
      if (restoredAt.has(other)) continue
      const copy = await checkStoredFile({ rel: other, path: join(dir, other), archived: other.startsWith('archive/'), sessionId, regular: await isRegular(join(dir, other)) }, keyring)
      const whole = wholeFile(copy)
      if (copy.ok === false && whole === null) conflicts.push({ file: rel, reason: `the folder's ${other}, another copy of session '${sessionId}', cannot be read (${copy.reason})` })
      else if (whole === null) continue
      // A copy that would hide the restored one is refused whether it is newer or not: --force
      // does not touch it, so forcing would write a file the server never shows.
      else if (archived && !other.startsWith('archive/')) {
        conflicts.push({ file: rel, reason: `the folder's active ${other} would hide the restored archive of session '${sessionId}'`, hidden: true })
      } else if (archived && archiveStamp(other) > archiveStamp(rel)) {
        // The server shows the archived copy with the latest stamp in its name, whatever its times say.
        conflicts.push({ file: rel, reason: `the folder's ${other} would be shown instead of the restored copy of session '${sessionId}' (a later stamp in its name)`, hidden: true })
      } else if (Date.parse(whole.updatedAt) > Date.parse(updatedAt)) {
        conflicts.push({ file: rel, reason: `the folder's ${other} holds a newer copy of session '${sessionId}' (updated_at ${whole.updatedAt}, backup ${updatedAt})` })
      }
    }
  }
  return { planned, conflicts, skipped }
}

/**
 * The backup's session files, each checked as the server's restore would read it; throws at the
 * first that is not. One sealed under a key not configured is whole (its envelope checked), only
 * unopened here: it comes with its clear updated_at and `missingKid`. The folder's own files that
 * hold no session are added to `skipped`.
 */
async function * checkedEntries (backup: BackupFile, keyring: Keyring | null, skipped: string[] = []): AsyncGenerator<{ entry: TarEntry, rel: string, archived: boolean, sessionId: string, updatedAt: string, file: SessionFile | null, missingKid: string | null }> {
  const seen = new Set<string>()
  const prefix = await commonPrefix(backup)
  for await (const entry of readTarGz(backup.read())) {
    const mapped = sessionPath(entry, prefix)
    if (mapped === null) continue
    if ('skipped' in mapped) {
      if (entry.type !== 'directory') skipped.push(mapped.skipped)
      continue
    }
    const { rel, archived, sessionId } = mapped
    if (seen.has(rel)) throw new CommandFailedError(`the backup holds ${rel} twice`)
    seen.add(rel)
    let file: SessionFile | null = null
    let missingKid: string | null = null
    try {
      file = parseSessionFile(rel, sessionText(rel, entry.data), sessionId, keyring)
    } catch (err) {
      // One file cannot tell a changed file from a wrong key: both are said.
      if (err instanceof SealNotOpenedError) throw new CommandFailedError(`the backup's ${err.message}: it does not open under key '${err.kid}' as TASK_ENCRYPTION_KEYS gives it, so either that is not the key that sealed it (give that one) or the file was changed; nothing was written`)
      if (!(err instanceof KeyUnavailableError)) throw new CommandFailedError(`the backup's ${(err as Error).message}; nothing was written`)
      missingKid = err.kid
    }
    yield { entry, rel, archived, sessionId, updatedAt: file?.updated_at ?? clearOf(entry.data).updated_at, file, missingKid }
  }
}

/** The restored files sealed under keys TASK_ENCRYPTION_KEYS does not hold, by kid. */
function keysNeeded (planned: Planned[]): KeysNeeded {
  const needs: KeysNeeded = kidRecord()
  for (const { missingKid, archived } of planned) if (missingKid !== null) needKey(needs, missingKid, archived)
  return needs
}

/** The stamp in an archived file's name (`<id>.<ms>.json`; 0 for `<id>.json`): the newest is the copy the server shows. */
function archiveStamp (rel: string): number {
  return Number(ARCHIVED_FILE.exec(rel.slice('archive/'.length))?.[2] ?? 0)
}

/** The session files already in the folder (folderSessionFiles), active and archived, by session id. */
function copiesBySession (rels: string[]): Map<string, string[]> {
  const copies = new Map<string, string[]>()
  for (const rel of rels) {
    const archived = rel.startsWith('archive/')
    const sessionId = (archived ? ARCHIVED_FILE : SESSION_FILE).exec(archived ? rel.slice('archive/'.length) : rel)?.[1] as string
    copies.set(sessionId, [...(copies.get(sessionId) ?? []), rel])
  }
  return copies
}

/**
 * Reads the backup again and writes each planned file durably; the backup must not have changed.
 * `confirmLock` runs before each rename: the folder's lock still names this process.
 */
async function write (backup: BackupFile, dir: string, planned: Planned[], confirmLock: () => Promise<void> | null): Promise<number> {
  const byPath = new Map(planned.map((item) => [item.rel, item]))
  const archiveDir = join(dir, 'archive')
  if (planned.some((item) => item.archived && item.action === 'write')) {
    await mkdir(archiveDir, { recursive: true, mode: 0o700 })
    if (!(await lstat(archiveDir)).isDirectory()) throw new CommandFailedError(`${archiveDir} is not a real folder (a symlink?); refusing to write into it`)
    await fsyncDir(nodeFs, dir)
  }
  let written = 0
  const left = (): string => `${written} of ${planned.filter((item) => item.action === 'write').length} files were restored before it, each whole; run the restore again once storage works`
  const tempName = tempNames()
  const prefix = await commonPrefix(backup)
  const taken = new Set<string>()
  for await (const entry of readTarGz(backup.read())) {
    const mapped = sessionPath(entry, prefix)
    const item = mapped === null || 'skipped' in mapped ? undefined : byPath.get(mapped.rel)
    if (item === undefined || item.action === 'unchanged') continue
    if (digest(entry.data) !== item.digest) throw new CommandFailedError(`${backup.path} changed while it was being restored; run the restore again`)
    const target = join(dir, item.rel)
    const folder = item.archived ? archiveDir : dir
    // The store's temp-file name: a restore cut short leaves only files the server removes at start.
    const temp = join(folder, tempName(item.sessionId))
    await writing(target, left, () => writeAndRename(nodeFs, temp, target, entry.data, entry.mtime, confirmLock))
    written++
    taken.add(item.rel)
  }
  // Changed in place since the plan (cut short, rewritten): what it no longer holds was not restored.
  const missing = planned.filter((item) => item.action === 'write' && !taken.has(item.rel)).length
  if (missing > 0) throw new CommandFailedError(`${backup.path} changed while it was being restored: ${missing} planned files are no longer in it; ${left()}`)
  await writing(dir, left, () => fsyncDir(nodeFs, dir))
  if (planned.some((item) => item.archived)) await writing(archiveDir, left, () => fsyncDir(nodeFs, archiveDir))
  return written
}

/**
 * Where an entry goes, below the backup's common folder `prefix` ('' for taskvault's own
 * layout); null for the folders leading to it; `skipped` for a file of the storage folder that
 * holds no session (ownFile). Anything else (a link, an unsafe or another path) makes the
 * backup unusable.
 */
function sessionPath (entry: TarEntry, prefix: string): { rel: string, archived: boolean, sessionId: string } | { skipped: string } | null {
  const name = safePath(entry.name)
  if (entry.type === 'directory' && (prefix.startsWith(name) || `${prefix}archive/`.startsWith(name))) return null
  const rel = name.startsWith(prefix) ? name.slice(prefix.length) : null
  if (rel !== null && ownFile(rel, entry.type)) return { skipped: name }
  if (entry.type !== 'file') throw new CommandFailedError(`the backup holds ${name}, which is not a regular file; not a taskvault backup`)
  const found = rel === null ? null : nativePath(rel)
  // A stray `my notes.json` beside the sessions, which `data/tasks/*.json` takes too: the server never reads it.
  if (found === null && rel !== null && strayJson(rel)) return { skipped: name }
  if (found === null) throw new CommandFailedError(`the backup holds ${name}, which is not ${prefix}<id>.json or ${prefix}archive/<name>.json; not a taskvault backup`)
  return found
}

/**
 * A file (or folder) every storage folder may hold besides sessions, which a tar of the whole
 * folder carries: the marker and lock, the server's temp files (it removes them at start), and
 * corrupt/ with the files it set aside. None is restored: the restore marks the folder itself.
 */
function ownFile (rel: string, type: TarEntry['type']): boolean {
  if (rel === 'corrupt/' || rel.startsWith('corrupt/')) return type === 'file' || type === 'directory'
  // The lock, and the guards a server taking over a stale lock holds for a moment: symlinks
  // (tar's `other`) while a server holds the folder, or if one died holding it.
  if ([LOCK_FILE, `${LOCK_FILE}.takeover`, `${LOCK_FILE}.takeover.reap`].includes(rel)) return type !== 'directory'
  if (type !== 'file') return false
  if (rel === MARKER_FILE) return true
  return TEMP_FILE.test(rel.startsWith('archive/') ? rel.slice('archive/'.length) : rel)
}

/** A `.json` file in the folder or archive/ not named like a session: no session file, never read by the server. */
function strayJson (rel: string): boolean {
  const name = rel.startsWith('archive/') ? rel.slice('archive/'.length) : rel
  return name.endsWith('.json') && !name.includes('/')
}

/** `<id>.json` or `archive/<name>.json`, the storage folder's own layout; null for anything else. */
function nativePath (rel: string): { rel: string, archived: boolean, sessionId: string } | null {
  const archived = rel.startsWith('archive/')
  const match = (archived ? ARCHIVED_FILE : SESSION_FILE).exec(archived ? rel.slice('archive/'.length) : rel)
  return match === null ? null : { rel, archived, sessionId: match[1] as string }
}

/** An entry's name without leading './', folders ending in '/'; absolute names and '..' are refused. */
function safePath (name: string): string {
  if (name.startsWith('/') || name.split('/').some((part) => part === '..')) {
    throw new CommandFailedError(`the backup holds ${name}, an unsafe path (absolute or with '..'); refusing it`)
  }
  return name.replace(/^(?:\.\/)+/u, '')
}

/**
 * The one folder every session file of the backup sits in: '' for taskvault's own layout,
 * 'data/tasks/' for the seed's `tar -czf b.tar.gz data/tasks/*.json`. When a folder ending in
 * archive/ could be either, it is read as the archive of its parent.
 */
async function commonPrefix (backup: BackupFile): Promise<string> {
  const names: string[] = []
  for await (const entry of readTarGz(backup.read())) {
    const name = safePath(entry.name)
    if (entry.type === 'file') names.push(name)
  }
  const native = (prefix: string, name: string): boolean => name.startsWith(prefix) && nativePath(name.slice(prefix.length)) !== null
  const other = (prefix: string, name: string): boolean => name.startsWith(prefix) && (ownFile(name.slice(prefix.length), 'file') || strayJson(name.slice(prefix.length)))
  // Files that hold no session may sit beside the sessions, but not make up the backup.
  const fits = (prefix: string): boolean => names.every((name) => native(prefix, name) || other(prefix, name)) && names.some((name) => native(prefix, name))
  const first = names[0]
  if (first === undefined || fits('')) return ''
  // The folders holding the first file, outermost first: data/tasks/ before data/tasks/archive/
  // (read as its archive), before data/tasks/corrupt/.
  const candidates = first.split('/').slice(0, -1).map((_, i, parts) => `${parts.slice(0, i + 1).join('/')}/`)
  // None fits: the folder holding sessions all the same, so that the refusal names the file in
  // the way (`data/tasks/s1.json~`), not the folder's own entry; else a storage folder that holds
  // no session yet (its marker, say: `tar -czf b.tar.gz data/tasks` of a new deployment).
  return candidates.find(fits) ?? candidates.find((prefix) => names.some((name) => native(prefix, name))) ??
    candidates.find((prefix) => names.every((name) => other(prefix, name))) ?? ''
}

async function isRegular (path: string): Promise<boolean> {
  return (await lstat(path).catch(() => null))?.isFile() ?? true
}

function digest (data: Buffer): string {
  return createHash('sha256').update(data).digest('hex')
}
