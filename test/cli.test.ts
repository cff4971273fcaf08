/**
 * The command-line tool as operators run it: `node dist/cli/taskvault.js ...` in a child
 * process, on prepared temp folders, checking exit codes, output and the files left behind.
 */
import { spawn, spawnSync } from 'node:child_process'
import { existsSync, lstatSync } from 'node:fs'
import { lstat, mkdir, readFile, readdir, rename, stat, symlink, unlink, writeFile } from 'node:fs/promises'
import { setTimeout as sleep } from 'node:timers/promises'
import { basename, join } from 'node:path'
import t from 'tap'
import { CLI, taskvault, type Run, snapshot } from './cli-run.js'
import { node } from './node-child.js'
import { build, get, tempDir } from './helper.js'
import { daysAgo, preparedFolder, storedSession } from './session-fixtures.js'

t.test('help and usage errors', async (t) => {
  // Independent runs, started together to keep the file quick.
  const names = ['validate', 'stats', 'archive', 'prune', 'backup', 'restore']
  const [help, none, ...own] = await Promise.all([taskvault(['--help']), taskvault([]), ...names.map((name) => taskvault([name, '--help']))])
  t.equal(help.code, 0)
  t.equal(none.code, 2, 'no command')
  const version = await taskvault(['--version'])
  const packageVersion = (JSON.parse(await readFile(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string }).version
  t.same([version.code, version.stdout], [0, `${packageVersion}\n`], '--version prints the package\'s version')
  const versionJson = await taskvault(['--version', '--json'])
  t.same([versionJson.code, versionJson.json()], [0, { version: packageVersion }], 'and with --json, as JSON')
  const helpOf = await taskvault(['help', 'validate'])
  t.same([helpOf.code, helpOf.stdout], [0, own[0]?.stdout], 'help <command> is <command> --help')
  t.same((await taskvault(['help', 'validate', '--json'])).stdout, own[0]?.stdout, 'with --json too')
  const helpUnknown = await taskvault(['help', 'nosuch'])
  t.same([helpUnknown.code, helpUnknown.stdout], [2, ''], 'help of an unknown command: a usage error, as nosuch --help is')
  t.match(helpUnknown.stderr, /unknown command 'nosuch'/)
  names.forEach((name, i) => {
    t.match(help.stdout, new RegExp(`\\n  ${name} `), `lists ${name}`)
    t.equal(own[i]?.code, 0, `${name} --help exits 0`)
    t.match(own[i]?.stdout, `Usage: taskvault ${name}`)
    t.match(own[i]?.stdout, '--json')
  })
  const cases: string[][] = [
    ['frobnicate'],
    ['validate', '--bogus', '--json'],
    ['validate', 'a', 'b'],
    ['archive', '--days', 'soon', '--json'],
    ['prune', '--days', '0'],
    ['backup', 'dir', '--json'],
    ['restore']
  ]
  const runs = await Promise.all(cases.map((args) => taskvault(args)))
  cases.forEach((args, i) => {
    const run = runs[i] as Run
    t.equal(run.code, 2, `${args.join(' ')}: exit 2`)
    if (args.includes('--json')) t.equal(run.json().error.code, 'USAGE', `${args.join(' ')}: a JSON error on stdout`)
    else t.match(run.stderr, /^taskvault: [^]+\nRun 'taskvault .*--help' for usage\.\n$/u)
  })
})

t.test('a bad setting exits 2 in one line saying what would do; a folder that does not exist fails, and is not made', async (t) => {
  const cwd = await tempDir(t, 'taskvault-cli-settings-')
  const missing = join(cwd, 'no-such-folder')
  const [level, keys, stats, validate, json] = await Promise.all([
    taskvault(['stats', cwd], { cwd, env: { LOG_LEVEL: 'loud' } }),
    taskvault(['stats', cwd], { cwd, env: { TASK_ENCRYPTION_KEYS: 'not-a-key' } }),
    taskvault(['stats', missing], { cwd }),
    taskvault(['validate', missing], { cwd }),
    taskvault(['validate', missing, '--json'], { cwd })
  ])
  t.equal(level.code, 2, 'LOG_LEVEL=loud: exit 2')
  t.match(level.stderr, /^taskvault: bad setting LOG_LEVEL must be one of fatal, error, warn, info, debug, trace, silent\n/u, 'the allowed values, once')
  t.equal(keys.code, 2, 'a malformed TASK_ENCRYPTION_KEYS is a bad setting like the others: exit 2')
  t.match(keys.stderr, /^taskvault: bad setting TASK_ENCRYPTION_KEYS: entry 1: /u)
  t.notMatch(level.stderr + keys.stderr, /--help/u, 'no pointer to --help, which says nothing of settings')
  for (const [name, run] of [['stats', stats], ['validate', validate]] as const) {
    t.equal(run.code, 1, `${name} on a missing folder: exit 1`)
    t.equal(run.stdout, '', `${name}: no report`)
    t.equal(run.stderr, `taskvault: ${missing} is not a storage folder (no such folder)\n`, `${name}: says so`)
  }
  t.equal(json.code, 1)
  t.match(json.json(), { error: { message: /no such folder/u } })
  t.notOk(existsSync(missing), 'the folder was not created')
  await writeFile(join(cwd, 'a-file'), 'x')
  const onFile = await taskvault(['validate', join(cwd, 'a-file')], { cwd })
  t.equal(onFile.code, 1)
  t.equal(onFile.stderr, `taskvault: ${join(cwd, 'a-file')} is not a storage folder (not a folder)\n`, 'a file given as the folder: says so')
})

t.test('a storage folder given as a symlink to one (a mounted volume\'s link), as the server takes it: every command works on it', async (t) => {
  const dir = await preparedFolder(t)
  const link = join(await tempDir(t, 'taskvault-link-'), 'tasks')
  await symlink(dir, link)
  const before = await snapshot(dir)
  const stats = await taskvault(['stats', link, '--json'])
  t.equal(stats.code, 0, stats.stderr)
  const direct = (await taskvault(['stats', dir, '--json'])).json()
  // The disk's free space moves with every other writer on it (tests run in parallel): not compared.
  const figures = (json: { storage: object }): object => ({ ...json, storage: { ...json.storage, dir, free_bytes: 0, free_ratio: 0 } })
  t.same(figures(stats.json()), figures(direct), 'the same figures as for the folder itself')
  const validate = await taskvault(['validate', link])
  t.equal(validate.code, 0, validate.stderr)
  const out = join(await tempDir(t, 'taskvault-backup-'), 'b.tar.gz')
  const backup = await taskvault(['backup', link, '--out', out, '--json'])
  t.equal(backup.code, 0, backup.stderr)
  const restore = await taskvault(['restore', out, link, '--json'])
  t.equal(restore.code, 0, restore.stderr)
  t.match(restore.json(), { restored: 0, unchanged: backup.json().files })
  t.same(await snapshot(dir), before, 'the folder is as it was')
  t.ok((await lstat(link)).isSymbolicLink(), 'the link is still a link')
})

t.test('*.json entries the server never reads (a symlink, a folder, a FIFO, a name that is no id) are reported as ignored by every command, never bad, never moved', async (t) => {
  const dir = await preparedFolder(t)
  const outside = join(await tempDir(t, 'taskvault-outside-'), 'o.json')
  const kept = storedSession('s9', ['Pending'], daysAgo(1))
  await writeFile(outside, kept)
  await symlink(outside, join(dir, 's9.json'))
  await symlink(outside, join(dir, 'archive', 's8.json'))
  await mkdir(join(dir, 's6.json'))
  spawnSync('mkfifo', [join(dir, 's5.json')])
  await writeFile(join(dir, 'my notes.json'), '{"note":"hi"}')
  const strays = ['archive/s8.json', 'my notes.json', 's5.json', 's6.json', 's9.json']
  const before = (await readdir(dir)).sort()
  const direct = await taskvault(['stats', dir, '--json'])
  t.equal(direct.code, 0, direct.stderr)
  t.equal(direct.json().storage.failed_loads, 0, 'stats: none is a file the server fails to load')
  for (const args of [['validate', dir, '--json'], ['validate', dir, '--fix', '--json']]) {
    const run = await taskvault(args)
    t.equal(run.code, 0, `${args.join(' ')}: ${run.stdout}`)
    const ignored = run.json().files.filter((f: { ignored?: boolean }) => f.ignored === true).map((f: { file: string }) => f.file).sort()
    t.same(ignored, strays, `${args.join(' ')}: each reported as ignored`)
  }
  t.same((await readdir(dir)).sort(), before, 'nothing moved (no corrupt/)')
  const out = join(await tempDir(t, 'taskvault-backup-'), 'b.tar.gz')
  const backup = await taskvault(['backup', dir, '--out', out, '--json'])
  t.equal(backup.code, 0, backup.stderr)
  t.same(backup.json().ignored.map((f: { file: string }) => f.file).sort(), strays)
  t.equal(await readFile(outside, 'utf8'), kept, 'the link\'s target is untouched')
})

t.test('validate: one line per file, exit 1 on a bad file, --fix moves it to corrupt/', async (t) => {
  const dir = await preparedFolder(t)
  await writeFile(join(dir, 'broken.json'), '{"session_id": "broken", ', { mode: 0o600 })
  await writeFile(join(dir, 'wrong-id.json'), storedSession('other', ['Pending'], daysAgo(1)), { mode: 0o600 })
  await writeFile(join(dir, 'archive', 'no-tasks.json'), '{"session_id": "no-tasks", "created_at": "2025-01-01T00:00:00Z", "updated_at": "2025-01-01T00:00:00Z", "session": {"session_id": "no-tasks"}}', { mode: 0o600 })

  const run = await taskvault(['validate', dir])
  t.equal(run.code, 1)
  const lines = run.stdout.trimEnd().split('\n')
  t.same(lines.slice(0, -1).map((line) => line.split(':')[0]), [
    '✅ archive/gone.json', '✅ archive/kept.json', '❌ archive/no-tasks.json', '❌ broken.json', '✅ failed.json',
    '✅ old.json', '✅ pending.json', '✅ recent.json', '❌ wrong-id.json'
  ])
  t.match(run.stdout, /❌ broken\.json: not valid JSON/u)
  t.match(run.stdout, /❌ archive\/no-tasks\.json: does not match the session file format at '\/session\/tasks'/u)
  t.match(run.stdout, /❌ wrong-id\.json: holds session 'other'/u)
  t.equal(lines.at(-1), '9 files checked, 3 bad')

  const json = (await taskvault(['validate', dir, '--json'])).json()
  t.match(json, { dir, checked: 9, bad: 3 })
  t.match(json.files.find((file: { file: string }) => file.file === 'broken.json'), { ok: false, reason: /not valid JSON/ })

  const fixed = await taskvault(['validate', dir, '--fix', '--json'])
  t.equal(fixed.code, 1, 'bad files were found, even though they are moved now')
  t.match(fixed.json().files.find((file: { file: string }) => file.file === 'broken.json'), { moved_to: /^corrupt\/broken\.json\./ })
  t.equal((await readdir(join(dir, 'corrupt'))).length, 3, 'all three set aside, none deleted')
  const again = await taskvault(['validate', dir])
  t.equal(again.code, 0)
  t.match(again.stdout, /6 files checked, 0 bad\n$/u)
})

t.test('stats: the figures the server reports for the same folder', async (t) => {
  const dir = await preparedFolder(t)
  await writeFile(join(dir, 'broken.json'), 'nope', { mode: 0o600 })
  // A damaged archived file: the server reads one only when asked for it, and counts it in its archive until then.
  await writeFile(join(dir, 'archive', 'cut.json'), (await readFile(join(dir, 'archive', 'kept.json'))).subarray(0, 100), { mode: 0o600 })
  const run = await taskvault(['stats', dir, '--json'])
  t.equal(run.code, 0)
  const fromFiles = run.json()
  t.match(fromFiles, {
    total_sessions: 4,
    active_sessions: 1,
    completed_sessions: 3,
    total_tasks: 7,
    completed_tasks: 5,
    failed_tasks: 1,
    pending_tasks: 1,
    in_progress_tasks: 0,
    archived_sessions: 3,
    storage: { dir, files: 4, archive_files: 3, failed_loads: 1 }
  })
  t.ok(fromFiles.storage.used_bytes >= fromFiles.storage.bytes + fromFiles.storage.archive_bytes, 'storage used covers every file')

  const app = await build(t, { dir, config: { TASK_ARCHIVE_DAYS: 0 } })
  const served = (await get(app, '/stats')).json()
  for (const key of ['total_sessions', 'active_sessions', 'completed_sessions', 'total_tasks', 'completed_tasks', 'failed_tasks', 'pending_tasks', 'in_progress_tasks', 'archived_sessions']) {
    t.equal(fromFiles[key], served[key], key)
  }
  t.equal(fromFiles.storage.bytes, served.storage.bytes, 'storage.bytes')
  t.equal(fromFiles.storage.archive_bytes, served.storage.archive_bytes, 'storage.archive_bytes')
  t.equal(fromFiles.storage.failed_loads, served.storage.failed_loads, 'failed_loads')

  const text = await taskvault(['stats', dir])
  t.match(text.stdout, /sessions\s+4 \(1 active, 3 completed\)/u)
  t.match(text.stdout, /archived sessions\s+3/u)
})

t.test('archive and prune run the scheduler\'s passes', async (t) => {
  const dir = await preparedFolder(t)
  const archived = await taskvault(['archive', dir, '--days', '30', '--json'])
  t.equal(archived.code, 0, archived.stderr)
  t.match(archived.json(), { dir, days: 30, archived: 2, errors: 0 })
  t.same(archived.json().archived_ids.sort(), ['failed', 'old'])
  t.same((await readdir(dir)).filter((name) => name.endsWith('.json')).sort(), ['pending.json', 'recent.json'], 'recent and pending stay')
  t.same((await readdir(join(dir, 'archive'))).sort(), ['failed.json', 'gone.json', 'kept.json', 'old.json'])
  t.notOk(existsSync(join(dir, '.taskvault.lock')), 'the lock is released')

  const again = await taskvault(['archive', dir, '--days', '30'])
  t.equal(again.code, 0)
  t.match(again.stdout, 'nothing archived')

  // kept (failed, 50 days) and failed (failed, 100 days) get 120 days; old (100 days) and gone (400) only 60.
  const pruned = await taskvault(['prune', dir, '--days', '60', '--failed-days', '120', '--json'])
  t.equal(pruned.code, 0, pruned.stderr)
  t.same(pruned.json().deleted_ids.sort(), ['gone', 'old'])
  t.same((await readdir(join(dir, 'archive'))).sort(), ['failed.json', 'kept.json'])
  const text = await taskvault(['prune', dir, '--days', '60'])
  t.match(text.stdout, 'Deleted 1 archived sessions: failed')
})

t.test('archive and prune run no task: a background run a server left behind keeps its Pending tasks and its record', async (t) => {
  const dir = await preparedFolder(t)
  // A server stopped during a background run leaves this: the record, and tasks still Pending.
  const left = JSON.parse(storedSession('running', ['Completed', 'Pending', 'Pending'], daysAgo(100), 'wire money')) as { background_run?: unknown }
  left.background_run = { started_at: daysAgo(100) }
  const before = JSON.stringify(left, null, 2) + '\n'
  await writeFile(join(dir, 'running.json'), before, { mode: 0o600 })
  for (const args of [['archive', dir, '--days', '0'], ['prune', dir, '--days', '90']]) {
    const run = await taskvault(args)
    t.equal(run.code, 0, `${args[0]} exits 0 ${run.stderr}`)
    t.equal(await readFile(join(dir, 'running.json'), 'utf8'), before, `${args[0]}: the session is untouched (no task run, the record kept)`)
  }
})

t.test('archive and prune default to the settings, from the environment or ./.env', async (t) => {
  const cwd = await tempDir(t, 'taskvault-cli-env-')
  const dir = await preparedFolder(t)
  await writeFile(join(cwd, '.env'), `TASK_STORAGE_DIR=${dir}\nTASK_ARCHIVE_DAYS=50\n`)
  const archived = await taskvault(['archive', '--json'], { cwd })
  t.equal(archived.code, 0, archived.stderr)
  t.match(archived.json(), { dir, days: 50 })
  const off = await taskvault(['prune'], { cwd, env: { TASK_ARCHIVE_RETENTION_DAYS: '0' } })
  t.equal(off.code, 2, 'retention off and no --days')
  const pruned = await taskvault(['prune', '--json'], { cwd, env: { TASK_ARCHIVE_RETENTION_DAYS: '300' } })
  t.same(pruned.json().deleted_ids, ['gone'], 'the environment wins over .env and defaults')
  t.equal((await taskvault(['stats'], { cwd, env: { TASK_ARCHIVE_DAYS: 'lots' } })).code, 2, 'a bad setting is a usage error')
  const lock = await taskvault(['stats'], { cwd, env: { TASK_LOCK_REFRESH_MS: '60000' } })
  t.equal(lock.code, 2, 'so is a lock refresh not under half the stale time')
  t.match(lock.stderr, /^taskvault: bad setting TASK_LOCK_STALE_MS \(60000\) must be at least twice TASK_LOCK_REFRESH_MS \(60000\)/u)
})

t.test('backup then restore round-trips every byte', async (t) => {
  const dir = await preparedFolder(t)
  const longId = 'L'.repeat(128)
  await writeFile(join(dir, `${longId}.json`), storedSession(longId, ['Pending'], daysAgo(1), 'ünïcödé ✓ "quoted"\n'), { mode: 0o600 })
  await writeFile(join(dir, 'archive', 'kept.1700000000000.json'), storedSession('kept', ['Completed'], daysAgo(60)), { mode: 0o600 })
  const before = await snapshot(dir)
  const out = join(await tempDir(t, 'taskvault-backup-'), 'tasks.tar.gz')

  const backup = await taskvault(['backup', dir, '--out', out, '--json'])
  t.equal(backup.code, 0, backup.stderr)
  t.match(backup.json(), { dir, out, files: 8, active: 5, archived: 3, skipped: [] })
  t.equal(backup.json().compressed_bytes, (await stat(out)).size)
  t.equal((await stat(out)).mode & 0o777, 0o600)
  t.same(await snapshot(dir), before, 'the folder is untouched')
  t.equal((await taskvault(['backup', dir, '--out', out])).code, 1, 'an existing backup is not replaced')
  t.equal((await taskvault(['backup', dir, '--out', out, '--force'])).code, 0, 'unless --force')
  // Never into the storage folder, not even with --force, by any path to it.
  for (const inside of [join(dir, 'old.json'), join(dir, 'archive', 'b.tar.gz'), join(dir, '..', basename(dir), 'b.tar.gz')]) {
    const refused = await taskvault(['backup', dir, '--out', inside, '--force'])
    t.equal(refused.code, 1, inside)
    t.match(refused.stderr, /inside the storage folder/u)
  }
  const outDir = await taskvault(['backup', dir, '--out-dir', join(dir, 'archive')])
  t.equal(outDir.code, 1, '--out-dir inside the folder too')
  t.same(await snapshot(dir), before, 'the folder is untouched')

  const target = join(await tempDir(t, 'taskvault-restored-'), 'fresh')
  const restore = await taskvault(['restore', out, target, '--json'])
  t.equal(restore.code, 0, restore.stderr)
  t.match(restore.json(), { restored: 8, unchanged: 0, conflicts: [] })
  const after = await snapshot(target)
  t.same([...after.keys()].sort(), [...before.keys()].sort(), 'the same files')
  for (const [name, bytes] of before) t.ok(after.get(name)?.equals(bytes), `${name.slice(0, 40)}: every byte`)
  t.equal((await stat(join(target, 'old.json'))).mode & 0o777, 0o600)
  t.equal((await stat(join(target, 'archive'))).mode & 0o777, 0o700)

  const again = await taskvault(['restore', out, target, '--json'])
  t.match(again.json(), { restored: 0, unchanged: 8 }, 'restoring again writes nothing')

  const app = await build(t, { dir: target, config: { TASK_ARCHIVE_DAYS: 0 } })
  t.equal((await get(app, '/stats')).json().archived_sessions, 2, 'the server reads the restored folder (two ids, three files)')
  t.equal((await get(app, `/list?session_id=${longId}`)).json().tasks[0].instruction, 'ünïcödé ✓ "quoted"\n 1')
})

t.test('backups running at the same time into one --out-dir each get a name of their own; to one --out, the second is refused: none replaces another', async (t) => {
  const dir = await preparedFolder(t)
  // Enough sessions that both runs choose their name well before either puts its backup in place.
  for (let i = 0; i < 3000; i++) await writeFile(join(dir, `m${i}.json`), storedSession(`m${i}`, ['Completed'], daysAgo(1)), { mode: 0o600 })
  const outs = await tempDir(t, 'taskvault-backups-')
  const named = await Promise.all([1, 2].map(async () => taskvault(['backup', dir, '--out-dir', outs, '--json'])))
  for (const run of named) t.equal(run.code, 0, run.stderr)
  const written = named.map((run) => basename(run.json().out as string)).sort()
  t.not(written[0], written[1], `two names (${written.join(', ')})`)
  t.same((await readdir(outs)).sort(), written, 'both backups are there, and no temp file')
  const file = join(outs, 'b.tar.gz')
  const same = await Promise.all([1, 2].map(async () => taskvault(['backup', dir, '--out', file])))
  t.same(same.map((run) => run.code).sort(), [0, 1], 'one written, the other refused')
  // Refused at the start when the other one was written by then; otherwise when putting it in place.
  t.match(same.find((run) => run.code === 1)?.stderr, /b\.tar\.gz exists( \(written while this backup ran\))?; give --force to replace it/u)
  t.same((await readdir(outs)).sort(), [...written, 'b.tar.gz'].sort(), 'its temp file was removed')
})

t.test('backup leaves out files that do not load, and says so', async (t) => {
  const dir = await preparedFolder(t)
  await writeFile(join(dir, 'broken.json'), '{', { mode: 0o600 })
  const out = join(await tempDir(t, 'taskvault-backup-'), 'b.tar.gz')
  const run = await taskvault(['backup', dir, '-o', out])
  t.equal(run.code, 1)
  // Sizes in binary units, named as such (a KiB is 1,024 bytes).
  t.match(run.stdout, /Backed up 6 sessions \(\d+ active, \d+ archived; [\d.]+ KiB\) to .* \([\d.]+ (B|KiB)\)/u)
  t.match(run.stdout, /❌ left out broken\.json: not valid JSON/u)
  t.ok(existsSync(out), 'the backup of the rest is written')
})

t.test('restore and seal remove the temp files a run killed mid-write left in the folder and archive/, as the server\'s start does', async (t) => {
  const dir = await preparedFolder(t)
  const out = join(await tempDir(t, 'taskvault-backup-'), 'b.tar.gz')
  t.equal((await taskvault(['backup', dir, '--out', out])).code, 0)
  const keys = { TASK_ENCRYPTION_KEYS: `k1:${Buffer.alloc(32, 7).toString('base64')}` }
  for (const args of [['restore', out, dir], ['seal', dir]]) {
    // As a kill -9 leaves them: `.<id>.<pid>.<n>.tmp`, half written.
    const leftovers = [join(dir, '.old.99999.1.tmp'), join(dir, 'archive', '.gone.99999.2.tmp')]
    for (const path of leftovers) await writeFile(path, '{"half', { mode: 0o600 })
    const run = await taskvault(args, { env: keys })
    t.equal(run.code, 0, `${args[0]}: ${run.stderr}`)
    t.same(leftovers.filter((path) => existsSync(path)), [], `${args[0]}: no temp file left`)
  }
})

t.test('restore reads one backup from first pass to last: one put in its place while it runs (a backup made again with --force) is not taken', async (t) => {
  const make = async (prefix: string, count: number): Promise<string> => {
    const dir = await tempDir(t, 'taskvault-source-')
    for (let i = 0; i < count; i++) await writeFile(join(dir, `${prefix}${i}.json`), storedSession(`${prefix}${i}`, ['Completed', 'Pending'], daysAgo(1)), { mode: 0o600 })
    const out = join(await tempDir(t, 'taskvault-backup-'), `${prefix}.tar.gz`)
    const made = await taskvault(['backup', dir, '--out', out])
    if (made.code !== 0) throw new Error(made.stderr)
    return out
  }
  const backup = await make('first', 1500)
  const other = await make('second', 1500)
  const target = join(await tempDir(t, 'taskvault-restored-'), 'fresh')
  const [file, argv] = node([CLI, 'restore', backup, target, '--json'])
  const child = spawn(file, argv, { env: { PATH: process.env.PATH ?? '/usr/bin:/bin' }, stdio: ['ignore', 'pipe', 'pipe'] })
  let stdout = ''
  let stderr = ''
  child.stdout.setEncoding('utf8').on('data', (chunk: string) => { stdout += chunk })
  child.stderr.setEncoding('utf8').on('data', (chunk: string) => { stderr += chunk })
  const closed = new Promise<number | null>((resolve) => child.once('close', resolve))
  // The lock (a symlink naming its holder) is taken once the backup has been checked whole; the plan and the writes come after it.
  const locked = (): boolean => lstatSync(join(target, '.taskvault.lock'), { throwIfNoEntry: false }) !== undefined
  while (!locked() && child.exitCode === null) await sleep(2)
  t.equal(child.exitCode, null, 'stopped while it runs')
  child.kill('SIGSTOP')
  await rename(other, backup)
  child.kill('SIGCONT')
  const code = await closed
  t.equal(code, 0, `${String(code)} ${stderr} ${stdout}`)
  t.match(JSON.parse(stdout), { restored: 1500 })
  const names = (await readdir(target)).filter((name) => name.endsWith('.json')).sort()
  t.equal(names.length, 1500)
  t.ok(names.every((name) => name.startsWith('first')), 'every session is the first backup\'s, none the second\'s')
})

t.test('restore of a FIFO (or anything not a regular file) says it is not a file, without waiting for a writer', async (t) => {
  const scratchDir = await tempDir(t, 'taskvault-fifo-')
  const fifo = join(scratchDir, 'b.tar.gz')
  spawnSync('mkfifo', [fifo])
  const run = await taskvault(['restore', fifo, join(scratchDir, 'target')])
  t.equal(run.code, 1)
  t.equal(run.stderr, `taskvault: ${fifo} is not a file\n`)
})

t.test('restore of a backup that is missing, or that it may not read, says so (not that it is not a file)', async (t) => {
  const scratchDir = await tempDir(t, 'taskvault-unread-')
  const missing = join(scratchDir, 'gone.tar.gz')
  const run = await taskvault(['restore', missing, join(scratchDir, 'target')])
  t.equal(run.code, 1)
  t.equal(run.stderr, `taskvault: ${missing}: no such file\n`)
  const locked = join(scratchDir, 'b.tar.gz')
  await writeFile(locked, 'not read', { mode: 0o000 })
  const denied = await taskvault(['restore', locked, join(scratchDir, 'target')], { unprivileged: true })
  t.equal(denied.code, 1)
  t.equal(denied.stderr, `taskvault: ${locked} cannot be read (EACCES)\n`)
  t.notOk(existsSync(join(scratchDir, 'target')), 'no folder made')
})

t.test('restore refuses to overwrite newer files unless --force, writing nothing', async (t) => {
  const dir = await preparedFolder(t)
  const out = join(await tempDir(t, 'taskvault-backup-'), 'b.tar.gz')
  t.equal((await taskvault(['backup', dir, '--out', out])).code, 0)

  const newer = storedSession('old', ['Completed', 'Completed', 'Completed'], daysAgo(0))
  await writeFile(join(dir, 'old.json'), newer)
  const older = storedSession('recent', ['Pending'], daysAgo(3650))
  await writeFile(join(dir, 'recent.json'), older)
  await writeFile(join(dir, 'pending.json'), '{ unreadable')
  await unlink(join(dir, 'archive', 'gone.json'))

  const refused = await taskvault(['restore', out, dir])
  t.equal(refused.code, 1)
  t.match(refused.stdout, /❌ old\.json: the folder's copy is newer/u)
  t.match(refused.stdout, /❌ pending\.json: the file in the folder cannot be read/u)
  t.notMatch(refused.stdout, /recent\.json/u, 'an older copy is no conflict')
  t.equal(await readFile(join(dir, 'old.json'), 'utf8'), newer, 'nothing was written')
  t.equal(await readFile(join(dir, 'recent.json'), 'utf8'), older)
  t.notOk(existsSync(join(dir, 'archive', 'gone.json')), 'not even the missing files')

  const forced = await taskvault(['restore', out, dir, '--force', '--json'])
  t.equal(forced.code, 0, forced.stderr)
  t.match(forced.json(), { restored: 4, unchanged: 2, forced: true })
  t.equal(JSON.parse(await readFile(join(dir, 'old.json'), 'utf8')).session.tasks.length, 2, 'the backup\'s copy')
  t.ok(existsSync(join(dir, 'archive', 'gone.json')))
})

t.test('restore refuses to roll back a session whose newer copy sits elsewhere in the folder (archived since the backup)', async (t) => {
  const dir = await tempDir(t, 'taskvault-cross-')
  await writeFile(join(dir, 'moved.json'), storedSession('moved', ['Pending'], daysAgo(3)))
  const out = join(await tempDir(t, 'taskvault-backup-'), 'b.tar.gz')
  t.equal((await taskvault(['backup', dir, '--out', out])).code, 0)
  // Since the backup the session finished and was archived: moved.json is gone, archive/moved.json is newer.
  await mkdir(join(dir, 'archive'), { mode: 0o700 })
  await writeFile(join(dir, 'archive', 'moved.json'), storedSession('moved', ['Completed', 'Completed'], daysAgo(1)))
  await unlink(join(dir, 'moved.json'))

  const refused = await taskvault(['restore', out, dir])
  t.equal(refused.code, 1)
  t.match(refused.stdout, /❌ moved\.json: the folder's archive\/moved\.json holds a newer copy of session 'moved'/u)
  t.notOk(existsSync(join(dir, 'moved.json')), 'no older active copy written to hide the archived one')
})

t.test('restore refuses an archived copy that an older one with a later stamp in its name would hide', async (t) => {
  const source = await tempDir(t, 'taskvault-stamp-src-')
  await mkdir(join(source, 'archive'), { mode: 0o700 })
  await writeFile(join(source, 'archive', 'x.json'), storedSession('x', ['Completed', 'Completed'], '2026-06-01T00:00:00.000Z'))
  const out = join(await tempDir(t, 'taskvault-backup-'), 'b.tar.gz')
  t.equal((await taskvault(['backup', source, '--out', out])).code, 0)
  // The folder holds an older copy under a stamped name: the server would show that one.
  const dir = await tempDir(t, 'taskvault-stamp-')
  await mkdir(join(dir, 'archive'), { mode: 0o700 })
  await writeFile(join(dir, 'archive', 'x.1700000000000.json'), storedSession('x', ['Completed'], '2026-01-01T00:00:00.000Z'))
  const refused = await taskvault(['restore', out, dir])
  t.equal(refused.code, 1, refused.stdout)
  t.match(refused.stdout, /archive\/x\.json: the folder's archive\/x\.1700000000000\.json would be shown instead of the restored copy/u)
  t.notOk(existsSync(join(dir, 'archive', 'x.json')), 'nothing written')
  const forced = await taskvault(['restore', out, dir, '--force'])
  t.equal(forced.code, 1, 'refused even with --force, which would not change what the server shows')
  t.match(forced.stdout, /--force does not touch; move those copies out first/u)
  t.notOk(existsSync(join(dir, 'archive', 'x.json')), 'nothing written')
})

t.test('restore --force refuses an archived copy that a newer active file would hide (brought back since the backup)', async (t) => {
  const dir = await tempDir(t, 'taskvault-back-')
  await mkdir(join(dir, 'archive'), { mode: 0o700 })
  await writeFile(join(dir, 'archive', 'back.json'), storedSession('back', ['Completed'], daysAgo(3)))
  const out = join(await tempDir(t, 'taskvault-backup-'), 'b.tar.gz')
  t.equal((await taskvault(['backup', dir, '--out', out])).code, 0)
  // Since the backup the session was brought back to active and changed.
  const active = storedSession('back', ['Completed', 'Pending'], daysAgo(1))
  await writeFile(join(dir, 'back.json'), active)
  await unlink(join(dir, 'archive', 'back.json'))
  for (const force of [false, true]) {
    const refused = await taskvault(['restore', out, dir, ...(force ? ['--force'] : [])])
    t.equal(refused.code, 1, `${force ? 'with' : 'without'} --force: refused`)
    t.match(refused.stdout, /archive\/back\.json: the folder's active back\.json would hide the restored archive of session 'back'/u)
    t.notOk(existsSync(join(dir, 'archive', 'back.json')), 'nothing written')
    t.equal(await readFile(join(dir, 'back.json'), 'utf8'), active, 'the active file as it was')
  }
})
