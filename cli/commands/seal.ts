import { dirname, join } from 'node:path'
import { BadSettingError, SessionTooLargeError } from '../../services/errors.js'
import { nodeFs } from '../../services/store/fs-seam.js'
import { fsyncDir, serializeSessionFile, tempNames, writeAndRename } from '../../services/store/session-files.js'
import { sessionBound } from '../../services/store/save-rules.js'
import { readMarker } from '../../services/store/storage-folder.js'
import type { Keyring } from '../../services/store/keyring.js'
import { UsageError } from '../args.js'
import { COMMON_HELP, type Command } from '../command.js'
import { DATABASE_HELP, DATABASE_OPTIONS, readTarget, withDatabase } from '../database.js'
import { checkStoredFile, EVERY_KID, ignoredByServer, KidProofs, listStoredFiles, setAsideCount, setAsideWarning, storageDir, withWriteLock, writing, type StoredFile } from '../folder.js'
import { sealRows, wrongSealingKey } from './seal-rows.js'

/** Folder fsyncs are shared by this many replaced files: an unsynced rename leaves the old, still readable, file. */
const FILES_PER_FSYNC = 256

export const sealCommand: Command = {
  name: 'seal',
  summary: 'seal (or re-seal) every session file under the active encryption key',
  help: `Usage: taskvault seal [dir | --database-url URL [--schema NAME]] [--json]

Seals every session file, active and archived, under the first key of TASK_ENCRYPTION_KEYS:
plaintext files are sealed, files sealed under another key are re-sealed. Files already sealed
under that key are left as they are, so a run cut short (even by kill -9) is finished by running
it again; each file is replaced whole (temp file, fsync, rename, folder fsync) and is readable
at every moment. Needs the folder: refused while a server holds it.

With --database-url, seals every row of the PostgreSQL store instead, active and archived, each
in its own commit; rows already under the active key are not even read, so a rerun after kill -9
only does what is left. It can run while servers work on the database: a row a server changed
meanwhile is left to that server (its own save seals it), and a server's next save of a row
sealed here goes through as usual (the row's version is kept, the content being the same).

Before writing anything, the active key is proven, unless the store keeps a key check of it
(written by a server's boot): when copies are sealed under its kid already and none of them
opens, the key is not the one they were sealed with, and nothing is written.

Rotation: put the new key first and keep the old one second (on the servers too), run seal,
then drop the old key.

Files in <dir>/corrupt/ (set aside by a restore or validate --fix) are kept as they were found,
so they are not sealed: seal counts them (set_aside in --json) and warns; inspect them, then
delete them before dropping the old key.

Exit status 1 when a file could not be read (unreadable, or sealed under a key not configured)
or holds more content than TASK_MAX_SESSION_BYTES allows (written under a larger bound; it is
left as it is). A file whose name is not <session id>.json holds no session: it is reported as
ignored (as validate does) and left alone.

Options:
${DATABASE_HELP}

${COMMON_HELP}`,
  options: DATABASE_OPTIONS,
  positionals: { min: 0, max: 1, names: 'dir' },
  async run (args, { settings, keyring, warn }) {
    // A setting missing, as a bad one is: exit 2.
    if (keyring === null) throw new BadSettingError('TASK_ENCRYPTION_KEYS is not set: there is no key to seal with')
    const target = readTarget(args, settings)
    if (target !== null) {
      if (args.positionals.length > 0) throw new UsageError(`give a folder or --database-url, not both (got '${args.positionals[0] ?? ''}')`)
      const problems: Array<{ file: string, reason: string }> = []
      const proofs = new KidProofs('rows', EVERY_KID)
      const counts = await withDatabase(target, settings, keyring, true, async (client) => sealRows(client, settings, keyring, problems, proofs))
      for (const problem of problems) warn(`❌ ${problem.file}: ${problem.reason}`)
      const wrongKey = proofs.failure('those rows were left as they are')
      if (wrongKey !== null) warn(`❌ ${wrongKey.message}`)
      const where = `${target.where} (schema ${target.schema})`
      const changed = counts.changed > 0 ? `, ${counts.changed} changed by a server meanwhile and left to it` : ''
      const lines = [
        `Sealed ${counts.sealed} rows of ${where} under key ${keyring.activeKid}${changed}${counts.unreadable > 0 ? `, ${counts.unreadable} could not be sealed (see above)` : ''}`,
        `Now ${counts.underKey} stored copies are sealed under ${keyring.activeKid} and ${counts.other} are not`
      ]
      return { code: counts.unreadable > 0 ? 1 : 0, json: { database: where, kid: keyring.activeKid, ...counts, problems }, lines }
    }
    const dir = storageDir(args.positionals[0], settings)
    const counts = { sealed: 0, already: 0, unreadable: 0, ignored: 0 }
    const problems: Array<{ file: string, reason: string, ignored?: true }> = []
    // A kid none of whose copies opens is said once, as the key's fault, beside each file's line.
    const proofs = new KidProofs('files', EVERY_KID)
    await withWriteLock(dir, settings, keyring, false, async (store) => {
      const touched = new Set<string>()
      let sinceFsync = 0
      const left = (): string => `${counts.sealed} files were sealed before it, the rest are as they were: run seal again once storage works`
      const syncTouched = async (): Promise<void> => {
        for (const folder of touched) await writing(folder, left, () => fsyncDir(nodeFs, folder))
        touched.clear()
        sinceFsync = 0
      }
      const tempName = tempNames()
      const files = await listStoredFiles(dir)
      // The marker's check was compared at the lock (a differing key stopped there already).
      if ((await readMarker(nodeFs, dir))?.keyChecks[keyring.activeKid] === undefined) await proveKey(files, keyring)
      for (const stored of files) {
        const checked = await checkStoredFile(stored, keyring)
        if (checked.ok === null) continue
        proofs.note(stored, checked)
        if (!checked.ok) {
          // Not named like a session (\`my notes.json\`) or not a regular file: no session file,
          // which the server and validate ignore; it must not fail a rotation script (validate's rule).
          if (ignoredByServer(stored)) {
            counts.ignored++
            problems.push({ file: stored.rel, reason: checked.reason, ignored: true })
            continue
          }
          counts.unreadable++
          problems.push({ file: stored.rel, reason: checked.reason })
          continue
        }
        if (checked.kid === keyring.activeKid) {
          counts.already++
          // Perhaps sealed by a run killed before its folder sync: the rename is made durable now.
          touched.add(dirname(stored.path))
          continue
        }
        const folder = dirname(stored.path)
        let data: Buffer
        try {
          // The server's bound, with the room its runs' records may use (a session may be stored in it).
          data = await serializeSessionFile(checked.file, 2, sessionBound(checked.file, settings.TASK_MAX_SESSION_BYTES, { records: true }), keyring, settings.TASK_MAX_SESSION_BYTES)
        } catch (err) {
          // Past the bound the server holds every save to (set lower since it was written): it stays as it is.
          if (!(err instanceof SessionTooLargeError)) throw err
          counts.unreadable++
          problems.push({ file: stored.rel, reason: `its content passes TASK_MAX_SESSION_BYTES (${err.maxBytes} bytes), so no server could save it sealed; left as it is` })
          continue
        }
        // Named like the server's temp files, so an interrupted run leaves nothing a restore keeps.
        const temp = join(folder, tempName(checked.file.session_id))
        await writing(stored.path, left, () => writeAndRename(nodeFs, temp, stored.path, data, checked.mtime, () => store.confirmLock()))
        counts.sealed++
        touched.add(folder)
        if (++sinceFsync >= FILES_PER_FSYNC) await syncTouched()
      }
      await syncTouched()
    })
    for (const problem of problems) warn(`${problem.ignored === true ? '⚠️' : '❌'} ${problem.file}: ${problem.reason}`)
    const wrongKey = proofs.failure('those files were left as they are')
    if (wrongKey !== null) warn(`❌ ${wrongKey.message}`)
    // Set aside as found, so not sealed: a rotation must not look finished while they wait there.
    const inCorrupt = await setAsideCount(dir)
    if (inCorrupt !== 0) warn(setAsideWarning(inCorrupt, 'sealed'))
    const ignored = counts.ignored > 0 ? `, ${counts.ignored} ignored: not named like a session` : ''
    const lines = [`Sealed ${counts.sealed} files under key ${keyring.activeKid} (${counts.already} already were${counts.unreadable > 0 ? `, ${counts.unreadable} could not be sealed (see above)` : ''}${ignored})`]
    return { code: counts.unreadable > 0 ? 1 : 0, json: { dir, kid: keyring.activeKid, ...counts, set_aside: inCorrupt, problems }, lines }
  }
}

/**
 * Without a key check, the copies under the active kid judge its key: some there and none
 * opening means TASK_ENCRYPTION_KEYS holds another key under that kid (a mistyped secret), and
 * sealing the rest under it would leave them where the right key cannot open them. Reads files
 * until one under the kid opens (all of them when none does).
 */
async function proveKey (files: StoredFile[], keyring: Keyring): Promise<void> {
  let unopened = 0
  for (const stored of files) {
    const checked = await checkStoredFile(stored, keyring)
    if (checked.ok === true && checked.kid === keyring.activeKid) return
    if (checked.ok === false && 'unopenedKid' in checked && checked.unopenedKid === keyring.activeKid) unopened++
  }
  if (unopened > 0) throw wrongSealingKey(keyring.activeKid, unopened, 'files')
}
