import t from 'tap'
import { chmod, lstat, mkdir, readFile, readdir, stat, symlink, writeFile } from 'node:fs/promises'
import { execFile } from 'node:child_process'
import { constants, existsSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import { pathToFileURL } from 'node:url'
import { promisify } from 'node:util'
import { FileSessionStore } from '../services/store/file-store.js'
import { ReaderPool } from '../services/store/reader-pool.js'
import { BATCH_BYTES, readBatch } from '../services/store/read-batch.js'
import { Keyring } from '../services/store/keyring.js'
import { serializeSessionFile } from '../services/store/session-files.js'
import { MARKER_FILE } from '../services/store/storage-folder.js'
import { nodeFs, type FsSeam } from '../services/store/fs-seam.js'
import { InvalidSessionIdError, StorageError, TaskvaultError } from '../services/errors.js'
import type { SessionFile } from '../schemas/session.js'
import { openStore, tempDir } from './helper.js'
import { faultFs } from './faults.js'
import { node } from './node-child.js'

const AT = '2024-01-15T10:30:00.000Z'
const TASK_KEYS = ['id', 'instruction', 'task_type', 'status', 'result', 'error', 'confidence', 'created_at', 'started_at', 'completed_at', 'attempts']

function sessionFile (id: string, instruction = 'Write code for a parser'): SessionFile {
  return {
    session_id: id,
    created_at: AT,
    updated_at: '2024-01-15T10:31:00.000Z',
    session: {
      session_id: id,
      current_index: 1,
      tasks: [
        { id: 'task_1_1705314600', instruction, task_type: 'Coding', status: 'Completed', result: 'def parse(): ...', error: null, confidence: 0.9, created_at: AT, started_at: AT, completed_at: '2024-01-15T10:31:00.000Z', attempts: 1 },
        { id: 'task_2_1705314600', instruction: 'Explain it', task_type: 'Analysis', status: 'Pending', result: null, error: null, confidence: null, created_at: AT, started_at: null, completed_at: null, attempts: 0 }
      ]
    }
  }
}

/** The folder's entries, but for its `.taskvault` marker (always there once init ran). */
/** Message ports open: each reader thread holds one until it has exited. */
const ports = (): number => process.getActiveResourcesInfo().filter((name) => name === 'MessagePort').length
/** Waits (up to 30 s) for the reader threads started since `before` ports were open to exit. */
async function threadsGone (before: number): Promise<number> {
  const until = Date.now() + 30_000
  while (ports() > before && Date.now() < until) await new Promise((resolve) => setTimeout(resolve, 10))
  return ports()
}
const names = async (dir: string): Promise<string[]> => (await readdir(dir)).filter((name) => name !== MARKER_FILE).sort()
const mode = async (path: string): Promise<number> => (await stat(path)).mode & 0o777

t.test('save then loadAll round-trips every value', async (t) => {
  const store = await openStore(t)
  const a = sessionFile('alpha')
  const b = sessionFile('beta-2_x', 'Implement ünïcödé ✓ "quotes"\nand newlines')
  const bytes = await store.save(a)
  await store.save(b)
  t.equal(bytes, (await stat(store.pathFor('alpha'))).size, 'save resolves with the stored size')

  const result = await store.loadAll({ concurrency: 4 })
  t.strictSame(result.failures, [])
  t.equal(result.removedTempFiles, 0)
  const loaded = result.sessions.sort((x, y) => x.file.session_id.localeCompare(y.file.session_id))
  t.strictSame(loaded.map((s) => s.file), [a, b])
  t.equal(loaded[0]?.bytes, bytes)
  t.strictSame(await names(store.dir), ['alpha.json', 'beta-2_x.json'], 'only the session files, no temp files')
})

t.test('a session file removed between the listing and its read is skipped, and the rest restore', async (t) => {
  let dir = ''
  const fs: FsSeam = {
    ...nodeFs,
    readdir: (async (path: string, options: object) => {
      const entries = await nodeFs.readdir(path, options as { withFileTypes: true })
      // Listed, then removed before the reader opens it (an operator's rm during the boot).
      if (path === dir) await nodeFs.unlink(join(dir, 'ghost.json')).catch(() => undefined)
      return entries
    }) as FsSeam['readdir']
  }
  const store = await openStore(t, fs)
  dir = store.dir
  for (let i = 0; i < 300; i++) await store.save(sessionFile(`s${i}`))
  await store.save(sessionFile('ghost'))
  const result = await store.loadAll({ concurrency: 2 })
  t.strictSame(result.failures, [])
  t.equal(result.sessions.length, 300, 'every other session restores')
  t.notOk(result.sessions.some((s) => s.file.session_id === 'ghost'))
})

t.test('the file is pretty JSON in the seed format, replaced whole on each save', async (t) => {
  const store = await openStore(t)
  const long = sessionFile('s1', 'x'.repeat(5000))
  await store.save(long)
  const short = sessionFile('s1', 'short')
  await store.save(short)
  const text = await readFile(store.pathFor('s1'), 'utf8')
  t.equal(text, JSON.stringify(short, null, 2) + '\n', 'exactly the new content, 2-space indented, trailing newline')
  const parsed = JSON.parse(text) as SessionFile
  t.strictSame(Object.keys(parsed).sort(), ['created_at', 'session', 'session_id', 'updated_at'])
  t.strictSame(Object.keys(parsed.session).sort(), ['current_index', 'session_id', 'tasks'])
  for (const task of parsed.session.tasks) t.strictSame(Object.keys(task).sort(), [...TASK_KEYS].sort())
})

t.test('permissions: a folder init creates is 0700, files 0600; a folder it did not create keeps its mode', async (t) => {
  const dir = await tempDir(t)
  await chmod(dir, 0o755)
  await writeFile(join(dir, 'old.json'), JSON.stringify(sessionFile('old')), { mode: 0o644 })
  await chmod(join(dir, 'old.json'), 0o644)
  const store = new FileSessionStore({ dir })
  t.match(await store.init(), { folder: 'adopted', openMode: 0o755 }, 'an open mode is reported, for a warning')
  t.equal(await mode(dir), 0o755, 'a pre-existing 0755 folder keeps its mode')
  await store.save(sessionFile('new'))
  await store.save(sessionFile('old'))
  t.equal(await mode(store.pathFor('new')), 0o600)
  t.equal(await mode(store.pathFor('old')), 0o600, 'a replaced 0644 file becomes 0600')

  const nested = new FileSessionStore({ dir: join(dir, 'a', 'b') })
  t.match(await nested.init(), { folder: 'created', openMode: null })
  t.equal(await mode(nested.dir), 0o700, 'a folder created by init')
  t.strictSame(await names(nested.dir), [], 'the writability probe is removed')
})

t.test('a folder init creates several levels deep is durable: each new level\'s parent is synced', async (t) => {
  const dir = await tempDir(t)
  const synced: string[] = []
  // Every folder opened for reading is opened to be synced (fsyncDir).
  const open = (async (path: string, flags: number, mode?: number) => {
    if ((flags & constants.O_DIRECTORY) !== 0) synced.push(path)
    return nodeFs.open(path, flags, mode)
  }) as FsSeam['open']
  const fs: FsSeam = { ...nodeFs, open }
  const store = new FileSessionStore({ dir: join(dir, 'a', 'b', 'tasks'), fs })
  t.teardown(() => store.close())
  t.match(await store.init(), { folder: 'created' })
  for (const parent of [dir, join(dir, 'a'), join(dir, 'a', 'b')]) t.ok(synced.includes(parent), `${parent} holds a new entry: synced`)
})

t.test('a file in the seed example format loads with the missing fields filled', async (t) => {
  const store = await openStore(t)
  const seed = {
    session_id: 'seed-example',
    created_at: '2024-01-15T10:30:00Z',
    updated_at: '2024-01-15T10:35:00Z',
    session: {
      session_id: 'seed-example',
      tasks: [
        { id: 'task_1_1705314600', instruction: 'Write a Python function for fibonacci', task_type: 'Coding', status: 'Completed', result: 'def fib(n): ...', confidence: 0.95, created_at: '2024-01-15T10:30:00Z', completed_at: '2024-01-15T10:31:00Z' },
        { id: 'task_2_1705314600', instruction: 'Explain its complexity', task_type: 'Analysis', status: 'Pending', result: null, confidence: null, created_at: '2024-01-15T10:30:00Z', completed_at: null }
      ],
      current_index: 1
    }
  }
  const text = JSON.stringify(seed, null, 2)
  await writeFile(join(store.dir, 'seed-example.json'), text)
  const { sessions: [loaded], failures } = await store.loadAll({ concurrency: 2 })
  t.strictSame(failures, [])
  t.equal(loaded?.bytes, Buffer.byteLength(text))
  const [t1, t2] = seed.session.tasks
  t.strictSame(loaded?.file, {
    ...seed,
    session: {
      ...seed.session,
      tasks: [
        { ...t1, error: null, started_at: null, attempts: 0 },
        { ...t2, error: null, started_at: null, attempts: 0 }
      ]
    }
  })

  // Without current_index it is derived: the first task still to run.
  const { current_index: _omit, ...noIndex } = seed.session
  await writeFile(join(store.dir, 'seed-example.json'), JSON.stringify({ ...seed, session: noIndex }))
  const again = await store.loadAll({ concurrency: 2 })
  t.equal(again.sessions[0]?.file.session.current_index, 1)
})

t.test('unreadable files are set aside in corrupt/, never deleted; valid ones still load', async (t) => {
  const store = await openStore(t)
  await store.save(sessionFile('good'))
  const bad = {
    'badjson.json': '{"session_id": "badjson", ',
    'invalid.json': JSON.stringify({ ...sessionFile('invalid'), created_at: 'yesterday' }),
    'wrongname.json': JSON.stringify(sessionFile('othername')),
    'dupes.json': JSON.stringify((() => {
      const f = sessionFile('dupes')
      f.session.tasks.push({ ...f.session.tasks[0]! })
      return f
    })()),
    // The id the list reads as every session: a hand-made or foreign file (create refuses it).
    'all.json': JSON.stringify(sessionFile('all'))
  }
  for (const [name, text] of Object.entries(bad)) await writeFile(join(store.dir, name), text)

  const result = await store.loadAll({ concurrency: 2 })
  t.strictSame(result.sessions.map((s) => s.file.session_id), ['good'])
  t.strictSame(result.failures.map((f) => f.name).sort(), Object.keys(bad).sort())
  t.match(result.failures.find((f) => f.name === 'badjson.json')?.reason, /badjson\.json.*JSON/)
  t.match(result.failures.find((f) => f.name === 'wrongname.json')?.reason, /othername/)
  t.match(result.failures.find((f) => f.name === 'all.json')?.reason, /^all\.json: holds session 'all', an id reserved for every session/)
  for (const failure of result.failures) {
    t.ok(failure.movedTo?.startsWith(join(store.corruptDir, failure.name) + '.'), `${failure.name} moved into corrupt/`)
    t.equal(await readFile(failure.movedTo!, 'utf8'), bad[failure.name as keyof typeof bad], 'content kept as it was')
  }
  t.strictSame(await names(store.dir), ['corrupt', 'good.json'])
  t.equal(await mode(store.corruptDir), 0o700)
  t.strictSame((await store.loadAll({ concurrency: 2 })).failures, [], 'nothing is reported twice')
})

t.test('a file holding bytes that are not UTF-8 is set aside as it is, not decoded to U+FFFD (which the next save would write for good); one holding U+FFFD itself loads', async (t) => {
  const store = await openStore(t)
  const latin = sessionFile('latin')
  ;(latin.session.tasks[0] as { instruction: string }).instruction = 'caf\u00e9'
  // The instruction in Latin-1, as an editor set to it would write: 0xE9, no UTF-8.
  const bytes = Buffer.from(JSON.stringify(latin).replace('caf\u00e9', 'caf__'), 'utf8')
  const at = bytes.indexOf('caf__') + 3
  bytes[at] = 0xe9
  bytes[at + 1] = 0x20
  await writeFile(join(store.dir, 'latin.json'), bytes)
  const own = sessionFile('own')
  ;(own.session.tasks[0] as { instruction: string }).instruction = 'a \uFFFD kept'
  await store.save(own)
  const result = await store.loadAll({ concurrency: 2 })
  t.strictSame(result.sessions.map((s) => s.file.session_id), ['own'])
  t.equal(result.sessions[0]?.file.session.tasks[0]?.instruction, 'a \uFFFD kept')
  t.match(result.failures, [{ name: 'latin.json', reason: /not UTF-8/ }])
  t.same(await readFile(result.failures[0]?.movedTo as string), bytes, 'set aside byte for byte')
})

t.test('loadAll removes temp files of interrupted saves and leaves other files alone', async (t) => {
  const store = await openStore(t)
  await store.save(sessionFile('keep'))
  const outside = await tempDir(t)
  await writeFile(join(outside, 'x.json'), JSON.stringify(sessionFile('x')))
  await symlink(join(outside, 'x.json'), join(store.dir, 'x.json'))
  await mkdir(join(store.dir, 'y.json'))
  await writeFile(join(store.dir, 'notes.txt'), 'not a session')
  await writeFile(join(store.dir, '.keep.12345.7.tmp'), '{"half": ')
  await writeFile(join(store.dir, '.other.1.1.tmp'), '')
  await writeFile(join(store.dir, '.unrelated.tmp'), 'operator file')

  const result = await store.loadAll({ concurrency: 3 })
  t.strictSame(result.sessions.map((s) => s.file.session_id), ['keep'], 'symlinked x.json is not followed')
  t.strictSame(result.failures, [], 'neither the symlink nor the folder is treated as corrupt')
  t.equal(result.removedTempFiles, 2)
  t.strictSame(await names(store.dir), ['.unrelated.tmp', 'keep.json', 'notes.txt', 'x.json', 'y.json'])
  t.ok((await lstat(join(store.dir, 'x.json'))).isSymbolicLink(), 'the symlink is left in place')
  t.ok((await stat(join(store.dir, 'y.json'))).isDirectory())
  t.ok(JSON.parse(await readFile(join(outside, 'x.json'), 'utf8')), 'the symlink target is untouched')
})

t.test('remove deletes and is idempotent', async (t) => {
  const store = await openStore(t)
  await store.save(sessionFile('gone'))
  await store.save(sessionFile('stays'))
  await store.remove('gone')
  t.strictSame(await names(store.dir), ['stays.json'])
  await t.resolves(store.remove('gone'), 'removing again is fine')
  await t.resolves(store.remove('never-existed'))
  t.strictSame(await names(store.dir), ['stays.json'])
})

t.test('archive moves the file into archive/', async (t) => {
  const store = await openStore(t)
  const file = sessionFile('old-one')
  await store.save(file)
  const before = await readFile(store.pathFor('old-one'))
  await store.archive(file)
  t.strictSame(await names(store.dir), ['archive'])
  t.same(await readFile(join(store.archiveDir, 'old-one.json')), before, 'byte-for-byte the same')
  t.equal(await mode(store.archiveDir), 0o700)
  t.strictSame((await store.loadAll({ concurrency: 2 })).sessions, [], 'archived sessions are not restored')
})

t.test('pathFor accepts only safe ids', async (t) => {
  const store = await openStore(t)
  t.equal(store.pathFor('a'.repeat(128)), join(store.dir, 'a'.repeat(128) + '.json'))
  t.equal(store.pathFor('Az09_-'), join(store.dir, 'Az09_-.json'))
  for (const id of ['../x', 'a/b', '', 'a'.repeat(129), '.', '..', 'a.b', 'a\\b', 'a\0b', 'a b', 'é']) {
    t.throws(() => store.pathFor(id), InvalidSessionIdError, JSON.stringify(id))
  }
})

t.test('save refuses an invalid session without writing anything', async (t) => {
  const store = await openStore(t)
  const file = sessionFile('s1')
  const badType = { ...file, session: { ...file.session, tasks: [{ ...file.session.tasks[0]!, task_type: 'Cooking' }] } }
  await t.rejects(store.save(badType as unknown as SessionFile), { code: 'INVALID_SESSION_STATE' })
  await t.rejects(store.save({ ...file, session_id: '../evil' }), TaskvaultError)
  await t.rejects(store.save({ ...file, session: { ...file.session, current_index: -1 } }), { code: 'INVALID_SESSION_STATE' })
  t.strictSame(await names(store.dir), [])
})

const FAULTS: Array<{ code: string, at: 'open' | 'write' | 'sync' | 'rename', expect: string }> = [
  { code: 'ENOSPC', at: 'write', expect: 'STORAGE_FULL' },
  { code: 'ENOSPC', at: 'open', expect: 'STORAGE_FULL' },
  { code: 'EIO', at: 'sync', expect: 'STORAGE_UNAVAILABLE' },
  { code: 'EIO', at: 'write', expect: 'STORAGE_UNAVAILABLE' },
  { code: 'EACCES', at: 'open', expect: 'STORAGE_UNAVAILABLE' },
  { code: 'EIO', at: 'rename', expect: 'STORAGE_UNAVAILABLE' }
]

for (const { code, at, expect } of FAULTS) {
  t.test(`${code} on ${at}: save fails cleanly and works again once the fault is gone`, async (t) => {
    const fs = faultFs()
    const store = await openStore(t, fs)
    await store.save(sessionFile('s1', 'version one'))
    const before = await readFile(store.pathFor('s1'))

    fs.fail(at, code)
    const err = await store.save(sessionFile('s1', 'version two')).then(() => null, (e: unknown) => e)
    t.type(err, StorageError)
    t.match(err, { code: expect, full: code === 'ENOSPC', cause: { code } })
    t.same(await readFile(store.pathFor('s1')), before, 'previous content byte-for-byte unchanged')
    t.strictSame(await names(store.dir), ['s1.json'], 'no temp file left behind')
    await t.rejects(store.save(sessionFile('s2')), { code: expect }, 'a new session fails too')
    t.strictSame(await names(store.dir), ['s1.json'])

    fs.heal()
    await store.save(sessionFile('s1', 'version two'))
    await store.save(sessionFile('s2'))
    t.strictSame(JSON.parse(await readFile(store.pathFor('s1'), 'utf8')), sessionFile('s1', 'version two'))
    t.strictSame(await names(store.dir), ['s1.json', 's2.json'])
  })
}

// The temp file is created while the session is serialized (services/store/session-files.ts):
// a large session serializes over several turns of the event loop, and the create may fail
// meanwhile. Its failure is observed at once (no unhandled rejection), and a serializer error wins.
t.test('a large session: a create that fails while it is serialized is a clean StorageError; too large wins over the disk', async (t) => {
  const fs = faultFs()
  const store = new FileSessionStore({ dir: await tempDir(t), fs, maxSessionBytes: 8 * 1024 * 1024 })
  await store.init()
  t.teardown(async () => { await store.close() })
  const large = sessionFile('big', 'x'.repeat(3 * 1024 * 1024))
  const unhandled: unknown[] = []
  const onUnhandled = (err: unknown): void => { unhandled.push(err) }
  process.on('unhandledRejection', onUnhandled)
  t.teardown(() => { process.off('unhandledRejection', onUnhandled) })

  fs.fail('open', 'ENOSPC')
  await t.rejects(store.save(large), { code: 'STORAGE_FULL', cause: { code: 'ENOSPC' } })
  const tooLarge = sessionFile('huge', 'x'.repeat(9 * 1024 * 1024))
  await t.rejects(store.save(tooLarge), { code: 'LIMIT_EXCEEDED' }, 'the session is too large, whatever the disk says')
  fs.heal()
  await t.rejects(store.save(tooLarge), { code: 'LIMIT_EXCEEDED' })
  t.strictSame(await names(store.dir), [], 'no temp file left behind')
  await new Promise((resolve) => setImmediate(resolve))
  t.strictSame(unhandled, [])

  await store.save(large)
  t.equal(JSON.parse(await readFile(store.pathFor('big'), 'utf8')).session.tasks[0].instruction.length, 3 * 1024 * 1024)
})

t.test('concurrent saves all land, each file whole', async (t) => {
  const store = await openStore(t)
  const files = Array.from({ length: 50 }, (_, i) => sessionFile(`s${i}`, `task ${i} `.repeat(i * 20)))
  await Promise.all(files.map((file) => store.save(file)))
  const listed = await names(store.dir)
  t.equal(listed.length, 50)
  t.ok(listed.every((name) => name.endsWith('.json')), 'no temp files left')
  for (const file of files) t.strictSame(JSON.parse(await readFile(store.pathFor(file.session_id), 'utf8')), file)

  // Concurrent saves of one session: unique temp names, and the file is always one whole version.
  const versions = Array.from({ length: 20 }, (_, i) => sessionFile('same', `version ${i}`))
  await Promise.all(versions.map((file) => store.save(file)))
  const final = JSON.parse(await readFile(store.pathFor('same'), 'utf8')) as SessionFile
  t.ok(versions.some((v) => JSON.stringify(v) === JSON.stringify(final)), 'one of the saved versions')
  const { sessions, failures } = await store.loadAll({ concurrency: 8 })
  t.equal(sessions.length, 51)
  t.strictSame(failures, [])
})

t.test('loadAll reads many batches on reader threads: every session once, corrupt files set aside, at any concurrency', async (t) => {
  const store = await openStore(t)
  const count = 700
  await Promise.all(Array.from({ length: count }, (_, i) => store.save(sessionFile(`s${i}`, `task ${i} ü€`))))
  // Corrupt files spread over several batches.
  for (const i of [3, 250, 511, 699]) await writeFile(join(store.dir, `s${i}.json`), '{"truncated": ')
  let setAside: string[] = []
  for (const concurrency of [1, 2, 5]) {
    const { sessions, failures } = await store.loadAll({ concurrency })
    const ids = sessions.map((s) => s.file.session_id)
    t.equal(new Set(ids).size, ids.length, `concurrency ${concurrency}: no session twice`)
    setAside = [...setAside, ...failures.map((f) => f.name)]
    t.equal(ids.length, count - 4, `concurrency ${concurrency}: every healthy session`)
    const one = sessions.find((s) => s.file.session_id === 's42')
    t.equal(one?.file.session.tasks[0]?.instruction, 'task 42 ü€', 'UTF-8 decoded')
    t.equal(one?.bytes, (await stat(store.pathFor('s42'))).size, 'bytes are the file size')
  }
  t.strictSame(setAside.sort(), ['s250.json', 's3.json', 's511.json', 's699.json'], 'each corrupt file reported once, then gone')
})

t.test('reader threads do not run the process\'s preloads: an --import\'ed module runs once, in the main thread', async (t) => {
  const dir = await tempDir(t)
  const log = join(dir, 'preload.log')
  const preload = join(dir, 'preload.mjs')
  await writeFile(preload, "import { appendFileSync } from 'node:fs'\nimport { isMainThread } from 'node:worker_threads'\nappendFileSync(process.env.PRELOAD_LOG, isMainThread ? 'main\\n' : 'thread\\n')\n")
  for (const id of ['a', 'b', 'c']) await writeFile(join(dir, `${id}.json`), JSON.stringify(sessionFile(id)))
  const pool = new URL('../services/store/reader-pool.js', import.meta.url).href
  const script = [
    `const { ReaderPool } = await import(${JSON.stringify(pool)})`,
    'const pool = new ReaderPool(1)',
    // The first read starts the thread (and is read here); the next ones wait for it.
    `await pool.read(${JSON.stringify(dir)}, [])`,
    'const until = Date.now() + 30000',
    'while (pool.threads === 0 && Date.now() < until) await new Promise((resolve) => setTimeout(resolve, 5))',
    `const { files } = await pool.read(${JSON.stringify(dir)}, ['a.json', 'b.json', 'c.json'])`,
    'console.log(files.filter((file) => \'length\' in file).length, pool.threads)',
    'await pool.close()'
  ].join('\n')
  await writeFile(join(dir, 'restore.mjs'), script)
  const { stdout } = await promisify(execFile)(...node(['--import', pathToFileURL(preload).href, join(dir, 'restore.mjs')]), { env: { PATH: process.env.PATH ?? '', PRELOAD_LOG: log }, timeout: 60_000 })
  t.equal(stdout.trim(), '3 1', 'the files were read on a reader thread')
  t.equal(await readFile(log, 'utf8'), 'main\n', 'the preload ran in the main thread only')
})

t.test('reads go to the calling thread until a reader thread has started, then to the threads; with none, all stay', async (t) => {
  const dir = await tempDir(t)
  for (const id of ['a', 'b']) await writeFile(join(dir, `${id}.json`), JSON.stringify(sessionFile(id)))
  const text = (response: Awaited<ReturnType<ReaderPool['read']>>): string[] => response.files.map((file) => 'length' in file
    ? (JSON.parse(Buffer.from(response.data.buffer, response.data.byteOffset + file.offset, file.length).toString('utf8')) as SessionFile).session_id
    : `${file.name}: failed`)
  const portsBefore = ports()

  const none = new ReaderPool(0)
  t.same(text(await none.read(dir, ['a.json', 'b.json'])), ['a', 'b'])
  t.same(text(await none.read(dir, ['b.json', 'missing.json'])), ['b', 'missing.json: failed'])
  t.equal(none.threads, 0)
  t.equal(ports(), portsBefore, 'no thread was started')
  await none.close()

  const pool = new ReaderPool(2)
  const first = await pool.read(dir, ['a.json', 'b.json'])
  t.same(text(first), ['a', 'b'], 'read while the threads start')
  t.equal(first.id, 0, 'read on this thread (a thread\'s reads are numbered from 1)')
  t.equal(pool.threads, 0, 'the first read did not wait for a thread')
  const until = Date.now() + 30_000
  while (pool.threads < 2 && Date.now() < until) await new Promise((resolve) => setTimeout(resolve, 5))
  t.equal(pool.threads, 2, 'both threads started')
  const reads = await Promise.all([pool.read(dir, ['a.json']), pool.read(dir, ['b.json']), pool.read(dir, ['a.json', 'b.json'])])
  t.same(reads.map(text), [['a'], ['b'], ['a', 'b']], 'a third read queues at a thread')
  t.ok(reads.every((read) => read.id > 0), 'read by the threads')
  await pool.close()
  await t.rejects(pool.read(dir, ['a.json']), /reader pool is closed/u)
  t.equal(await threadsGone(portsBefore), portsBefore, 'both threads ended')
})

t.test('a batch holds each file byte for byte, whatever its size, beside files that could not be read; sealed ones opened', async (t) => {
  const dir = await tempDir(t)
  const sizes: Record<string, number> = { 'empty.json': 0, 'one.json': 1, 'small.json': 3_000, 'big.json': 300_000, 'huge.json': 3_000_000 }
  for (const [name, size] of Object.entries(sizes)) await writeFile(join(dir, name), Buffer.alloc(size, name.charCodeAt(0)))
  await mkdir(join(dir, 'folder.json'))
  const ring = Keyring.parse(`k1:${Buffer.alloc(32, 7).toString('base64')}`)
  const long = sessionFile('sealed', 'x'.repeat(200_000))
  await writeFile(join(dir, 'sealed.json'), await serializeSessionFile(long, 2, Number.POSITIVE_INFINITY, ring))
  const names = ['empty.json', 'big.json', 'folder.json', 'one.json', 'missing.json', 'huge.json', 'sealed.json', 'small.json']
  const { files, data, deferred } = readBatch({ id: 1, dir, names, maxBytes: BATCH_BYTES }, ring)
  t.same(deferred, [])
  const bytes = (name: string): Buffer => {
    const file = files.find((entry) => entry.name === name)
    if (file === undefined || !('length' in file)) throw new Error(`${name} not read`)
    return Buffer.from(data.buffer, data.byteOffset + file.offset, file.length)
  }
  for (const name of Object.keys(sizes)) t.ok(bytes(name).equals(readFileSync(join(dir, name))), `${name}: ${sizes[name]} bytes, as on disk`)
  t.same(files.filter((file) => 'code' in file), [{ name: 'folder.json', code: 'ENOTREG' }, { name: 'missing.json', code: 'ENOENT' }])
  t.same(JSON.parse(bytes('sealed.json').toString('utf8')), long, 'the sealed file is held opened')
  t.match(files.find((file) => file.name === 'sealed.json'), { kid: 'k1', stored: readFileSync(join(dir, 'sealed.json')).length })
  t.same(files.map((file) => file.name), names, 'in the order asked')

  // A file longer than fstat says (the kernel's files report 0 bytes) is read to its end.
  const version = readFileSync('/proc/version')
  const proc = readBatch({ id: 2, dir: '/proc', names: ['version'], maxBytes: BATCH_BYTES }, null)
  t.ok(version.length > 0 && Buffer.from(proc.data).equals(version), '/proc/version read whole, though fstat gives 0 bytes')
})

t.test('a batch stops before the file that would take it past its bytes, which go to another read: one file alone always fits; a restore of large sessions reads them all', async (t) => {
  const dir = await tempDir(t)
  const sizes: Record<string, number> = { 'a.json': 400, 'b.json': 500, 'c.json': 2_000, 'd.json': 10 }
  for (const [name, size] of Object.entries(sizes)) await writeFile(join(dir, name), Buffer.alloc(size, 0x20))
  const full = readBatch({ id: 1, dir, names: ['a.json', 'b.json', 'c.json', 'd.json'], maxBytes: 1_000 }, null)
  t.same(full.files.map((file) => file.name), ['a.json', 'b.json'])
  t.equal(full.data.length, 900)
  t.same(full.deferred, ['c.json', 'd.json'])
  const alone = readBatch({ id: 2, dir, names: full.deferred, maxBytes: 1_000 }, null)
  t.same([alone.files.map((file) => file.name), alone.deferred], [['c.json'], ['d.json']], 'a file past the bound alone is read')

  // 24 sessions of 3 MB and 20 small ones, one batch by count: more than one batch's bytes (BATCH_BYTES), every one restored.
  const store = await openStore(t)
  const big = 'y'.repeat(3 * 1024 * 1024)
  t.ok(24 * big.length > BATCH_BYTES)
  for (let n = 0; n < 24; n++) await store.save(sessionFile(`big${n}`, big))
  for (let n = 0; n < 20; n++) await writeFile(join(store.dir, `small${n}.json`), JSON.stringify(sessionFile(`small${n}`)))
  const { sessions, failures } = await store.loadAll({ concurrency: 2 })
  t.equal(sessions.length, 44)
  t.same(failures, [])
  t.equal(sessions.filter((session) => session.file.session.tasks[0]?.instruction === big).length, 24)
})

t.test('a sealed box whose data is not whole padded base64, or whose content is not UTF-8, is set aside like any file that does not open; the rest restore', async (t) => {
  const ring = Keyring.parse(`k1:${Buffer.alloc(32, 7).toString('base64')}`) as Keyring
  const store = new FileSessionStore({ dir: await tempDir(t), keyring: ring })
  await store.init()
  t.teardown(() => store.close())
  await store.save(sessionFile('good'))
  // A box whose base64 ends in `==` (its ciphertext a byte past a multiple of 3): the instruction grows until it does.
  const sealed = async (id: string): Promise<{ sealed: { data: string } }> => {
    for (let more = ''; ; more += 'x') {
      const document = JSON.parse((await serializeSessionFile(sessionFile(id, `Write code${more}`), 2, Number.POSITIVE_INFINITY, ring)).toString('utf8'))
      if (document.sealed.data.endsWith('==')) return document
    }
  }
  const broken: Record<string, (data: string) => string> = {
    padding: () => '==',
    lone: () => '=',
    empty: () => '',
    // One character more before the padding: decoded whole, a byte longer than the box.
    longer: (data) => `${data.slice(0, -2)}A==`
  }
  for (const [id, change] of Object.entries(broken)) {
    const document = await sealed(id)
    document.sealed.data = change(document.sealed.data)
    await writeFile(join(store.dir, `${id}.json`), JSON.stringify(document))
  }
  // Sealed with the right key, but what it holds is not UTF-8 (only a key holder can make one).
  const clear = { session_id: 'latin', created_at: AT, updated_at: AT }
  const content = Buffer.from(JSON.stringify({ session: sessionFile('latin').session }).replace('Write code', 'Write c\u00f4de'), 'latin1')
  await writeFile(join(store.dir, 'latin.json'), await ring.sealToBytes(clear, [content], 2))
  const { sessions, failures } = await store.loadAll({ concurrency: 2 })
  t.same(sessions.map((session) => session.file.session_id), ['good'])
  t.same(failures.map((failure) => failure.name).sort(), [...Object.keys(broken), 'latin'].map((id) => `${id}.json`).sort())
  t.match(failures.find((failure) => failure.name === 'latin.json'), { reason: /not UTF-8/ })
  // The same files read whole (archive reads, validate, the CLI): the same verdicts.
  const { readSessionDocument, sessionText } = await import('../services/store/session-files.js')
  for (const failure of failures) {
    const id = failure.name.slice(0, -'.json'.length)
    const bytes = await readFile(failure.movedTo as string)
    t.throws(() => readSessionDocument(failure.name, sessionText(failure.name, bytes), id, ring), { code: 'CORRUPT_SESSION_FILE' }, `${failure.name} read whole`)
  }
})

t.test('a reader thread that does not start is reported once as a process warning, and the batches are read all the same', async (t) => {
  const dir = await tempDir(t)
  await writeFile(join(dir, 'a.json'), JSON.stringify(sessionFile('a')))
  const warnings: Error[] = []
  const onWarning = (warning: Error): void => { warnings.push(warning) }
  process.on('warning', onWarning)
  t.teardown(() => { process.off('warning', onWarning) })
  const broken = new ReaderPool(2, null, new URL('data:text/javascript,throw new Error("broken install")'))
  t.equal((await broken.read(dir, ['a.json'])).files.length, 1)
  const until = Date.now() + 30_000
  while (warnings.length === 0 && Date.now() < until) await new Promise((resolve) => setTimeout(resolve, 10))
  await new Promise((resolve) => setTimeout(resolve, 100))
  t.match(warnings, [{ code: 'TASKVAULT_READER_THREAD', message: /a restore reader thread did not start \(broken install\); its batches are read on the main thread/u }], 'one warning for two threads')
  const after = await broken.read(dir, ['a.json'])
  t.ok(after.id === 0 && after.files.length === 1 && 'length' in (after.files[0] as object), 'read on this thread')
  await broken.close()
})

t.test('a folder of eight batches or fewer is restored on the main thread alone at the default concurrency; otherwise reader threads start', async (t) => {
  const store = await openStore(t)
  await Promise.all(Array.from({ length: 1024 }, (_, i) => store.save(sessionFile(`s${i}`))))
  const portsBefore = ports()
  // The most ports open while loadAll runs, sampled: the main thread lets timers in between batches.
  const threadsDuring = async (concurrency: number): Promise<number> => {
    let most = ports()
    const sampler = setInterval(() => { most = Math.max(most, ports()) }, 1)
    const { sessions } = await store.loadAll({ concurrency }).finally(() => { clearInterval(sampler) })
    t.equal(sessions.length, 1024 + (await readdir(store.dir)).filter((name) => name === 's1024.json').length)
    t.equal(await threadsGone(portsBefore), portsBefore, 'every thread ended')
    return most - portsBefore
  }
  t.equal(await threadsDuring(2), 0, 'no reader thread for 1,024 files')
  t.equal(await threadsDuring(4), 4, 'a concurrency raised for a network volume gets its threads, whatever the size')
  await store.save(sessionFile('s1024'))
  t.equal(await threadsDuring(2), 2, 'two reader threads for 1,025 files')
})

t.test('a restore that fails stops: queued batches do not start, nothing more is set aside, no reader thread stays', async (t) => {
  const dir = await tempDir(t)
  const store = new FileSessionStore({
    dir,
    fs: {
      ...nodeFs,
      // A symlink swapped in after readdir: readdir said it was a regular file.
      readdir: (async (path: string, options: object) => {
        const entries = await nodeFs.readdir(path, options as { withFileTypes: true })
        return entries.map((entry) => entry.name === 'a-link.json' ? Object.assign(Object.create(Object.getPrototypeOf(entry) as object) as object, entry, { isFile: () => true }) : entry)
          .sort((a, b) => a.name < b.name ? -1 : 1)
      }) as unknown as FsSeam['readdir']
    }
  })
  await store.init()
  await Promise.all(Array.from({ length: 1200 }, (_, i) => store.save(sessionFile(`s${String(i).padStart(5, '0')}`))))
  await writeFile(join(dir, 'target.txt'), 'x')
  await symlink(join(dir, 'target.txt'), join(dir, 'a-link.json'))
  await writeFile(join(dir, 'z-corrupt.json'), '{ not json')
  const portsBefore = ports()

  // Concurrency 1: two batches in flight, so the failing first batch is parsed before a third can start, whatever the machine's load.
  await t.rejects(store.loadAll({ concurrency: 1 }), { code: 'STORAGE_UNAVAILABLE', message: /a-link\.json.*ELOOP/u })
  t.equal(await threadsGone(portsBefore), portsBefore, 'every reader thread ended')
  t.ok(existsSync(join(dir, 'z-corrupt.json')), 'a batch queued after the failure never ran, so its corrupt file was not moved')
})
