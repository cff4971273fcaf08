/**
 * Encryption at rest (TASK_ENCRYPTION_KEYS): sealed files round-trip through the API and a
 * restart; tampered, swapped or wrongly keyed files are set aside as corrupt; a missing key
 * stops the boot and touches nothing; plaintext and sealed files live side by side; rotation
 * with `taskvault seal` survives kill -9; no key ever reaches what the service writes.
 */
import { spawn, spawnSync } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { mkdir, readFile, readdir, readlink, rename, rm, symlink, truncate, writeFile } from 'node:fs/promises'
import { hostname } from 'node:os'
import { join, sep } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { gunzipSync } from 'node:zlib'
import t from 'tap'
import { buildApp } from '../app.js'
import type { SessionFile } from '../schemas/session.js'
import { FileSessionStore } from '../services/store/file-store.js'
import { Keyring } from '../services/store/keyring.js'
import { readSessionDocument, serializeSessionFile } from '../services/store/session-files.js'
import { build, get, markAsTaskvault, memoryLog, post, tempDir, waitFor } from './helper.js'
import { daysAgo, storedSession } from './session-fixtures.js'
import { LOCK_FILE } from '../services/store/storage-lock.js'
import { CLI, taskvault } from './cli-run.js'
import { faultFs } from './faults.js'
import { node } from './node-child.js'
import { fill, mountedFolder } from './tmpfs.js'

const key = (): string => randomBytes(32).toString('base64')
const K1 = key()
const K2 = key()
const KEYS_1 = `k1:${K1}`
const SECRET = 'the customer password is hunter2'

async function readJson (path: string): Promise<any> {
  return JSON.parse(await readFile(path, 'utf8'))
}

t.test('keys: the list and @file forms; a malformed list names the entry, never the key', async (t) => {
  const ring = Keyring.parse(`k1:${K1}, k2:${K2}`)
  t.equal(ring?.activeKid, 'k1', 'the first key seals')
  t.strictSame(ring?.kids, ['k1', 'k2'])
  t.equal(Keyring.parse('  '), null, 'empty: no encryption')
  const dir = await tempDir(t)
  await writeFile(join(dir, 'keys'), `k2:${K2}\nk1:${K1}\n`)
  t.equal(Keyring.parse(`@${join(dir, 'keys')}`)?.activeKid, 'k2', 'a key file (a Secret mount), one entry a line')
  const short = randomBytes(31).toString('base64')
  const bad: Array<[string, RegExp]> = [
    [`k1:${short}`, /entry 1 \(kid 'k1'\): the key must be 32 bytes, it is 31/],
    [`k1:${K1},k1:${K2}`, /entry 2: kid 'k1' appears twice/],
    [`k1:${K1},k2:${K2}\nk3:${K1}`, /entry 3 \(kid 'k3'\): the same key as kid 'k1'; a new kid needs a new key/],
    [`bad kid!:${K1}`, /entry 1: expected kid:base64key/],
    [K1, /entry 1: expected kid:base64key/],
    [`k1:${K1.slice(0, -4)}!!!!`, /entry 1 \(kid 'k1'\): the key is not base64/],
    [`@${join(dir, 'missing')}`, /cannot read the key file/],
    ['@/dev/zero', /cannot read the key file \/dev\/zero \(more than 1048576 bytes/],
    // An `@` typed before the list: read as a file's path, which must not be printed.
    [`@k1:${K1}`, /cannot read the key file named after the '@' \(not shown: it is no absolute path, and may hold a key\) \(ENOENT\)/],
    [`@${join(dir, 'keys')},k1:${K1}`, /cannot read the key file named after the '@'/]
  ]
  for (const [value, message] of bad) {
    t.throws(() => Keyring.parse(value), { code: 'INVALID_ENCRYPTION_KEYS', message }, message.source)
    try {
      Keyring.parse(value)
    } catch (err) {
      t.notOk((err as Error).message.includes(K1) || (err as Error).message.includes(short), 'the message holds no key')
      t.match((err as Error).message, /^TASK_ENCRYPTION_KEYS: /, 'it names the setting')
    }
  }
  await t.rejects(buildApp({ readEnvironment: false, config: { TASK_STORAGE_DIR: dir, TASK_ENCRYPTION_KEYS: `k1:${short}` } }), { code: 'INVALID_ENCRYPTION_KEYS' }, 'a bad list stops the boot')
})

t.test('round trip through the API and a restart: the file is an envelope with the id and times in clear', async (t) => {
  const dir = await tempDir(t)
  const config = { TASK_ENCRYPTION_KEYS: KEYS_1 }
  let app = await build(t, { dir, config })
  t.equal((await post(app, '/create', { session_id: 'secret', instructions: `1. ${SECRET}\n2. second` })).statusCode, 200)
  t.equal((await post(app, '/execute', { session_id: 'secret' })).statusCode, 200)
  const before = (await get(app, '/list?session_id=secret')).json()
  const text = await readFile(join(dir, 'secret.json'), 'utf8')
  t.notOk(text.includes('hunter2'), 'no instruction or result in clear on disk')
  const envelope = JSON.parse(text)
  t.strictSame(Object.keys(envelope), ['session_id', 'created_at', 'updated_at', 'sealed'])
  t.match(envelope.sealed, { v: 1, alg: 'A256GCM', kid: 'k1', iv: String, tag: String, data: String })
  t.equal(Buffer.from(envelope.sealed.iv, 'base64').length, 12, 'a 96-bit IV')
  t.match((await get(app, '/stats')).json().encryption, { enabled: true, active_kid: 'k1', sealed_sessions: { k1: 1 }, plaintext_sessions: 0 })
  await app.close()

  app = await build(t, { dir, config })
  t.strictSame((await get(app, '/list?session_id=secret')).json(), before, 'the same session after a restart')
  // Each write has a fresh IV.
  await post(app, '/execute', { session_id: 'secret' })
  t.not((await readJson(join(dir, 'secret.json'))).sealed.iv, envelope.sealed.iv)
})

const AT = '2026-01-01T00:00:00.000Z'

/** A session file of these tasks (each filled out from `task`), for the sealed-layout tests. */
function fileOf (sessionId: string, updatedAt: string, currentIndex: number, tasks: Array<Partial<SessionFile['session']['tasks'][number]>>): SessionFile {
  const task = { id: 't', instruction: 'step', task_type: 'General' as const, status: 'Pending' as const, result: null, error: null, confidence: null, created_at: AT, started_at: null, completed_at: null, attempts: 0 }
  return { session_id: sessionId, created_at: AT, updated_at: updatedAt, session: { session_id: sessionId, current_index: currentIndex, tasks: tasks.map((fields) => ({ ...task, ...fields })) } }
}

t.test('a large session seals in slices into the same document JSON would write, and opens back whole', async (t) => {
  const ring = Keyring.parse(KEYS_1)
  const file = fileOf('large', AT, 3, Array.from({ length: 3 }, (_, i) => ({ id: `t${i}`, instruction: `step ${i}`, status: 'Completed' as const, result: `é\u0001${i}`.repeat(400_000), started_at: AT, completed_at: AT, attempts: 1 })))
  const bytes = await serializeSessionFile(file, 2, Number.POSITIVE_INFINITY, ring)
  const text = bytes.toString('utf8')
  t.equal(text, JSON.stringify(JSON.parse(text), null, 2) + '\n', 'laid out exactly as JSON.stringify would')
  t.strictSame(readSessionDocument('large.json', text, 'large', ring), { file, kid: 'k1' })
})

t.test('a small session seals in one pass into the same document JSON would write, at any indent, and opens back', async (t) => {
  const ring = Keyring.parse(KEYS_1)
  const file = fileOf('small-1', '2026-01-01T00:00:01.000Z', 0, [{ id: 't1', instruction: 'say "hi" <b>' }])
  const ivs = new Set<string>()
  for (const indent of [0, 1, 2, 4]) {
    const text = (await serializeSessionFile(file, indent, Number.POSITIVE_INFINITY, ring)).toString('utf8')
    t.equal(text, JSON.stringify(JSON.parse(text), null, indent) + '\n', `indent ${indent}: laid out exactly as JSON.stringify would`)
    t.strictSame(readSessionDocument('small-1.json', text, 'small-1', ring), { file, kid: 'k1' })
    ivs.add(JSON.parse(text).sealed.iv)
  }
  // IVs come from a pool filled in blocks: 600 seals cross two refills, and no IV repeats.
  for (let i = 0; i < 600; i++) ivs.add(JSON.parse((await serializeSessionFile(file, 0, Number.POSITIVE_INFINITY, ring)).toString('utf8')).sealed.iv)
  t.equal(ivs.size, 604, 'every seal has its own IV')
})

t.test('tampered, swapped or wrongly keyed files are set aside with "authentication failed"; the rest load', async (t) => {
  const dir = await tempDir(t)
  const app = await build(t, { dir, config: { TASK_ENCRYPTION_KEYS: KEYS_1 } })
  for (const id of ['good', 'data', 'tag', 'iv', 'swap-a', 'swap-b', 'relabel', 'badkid', 'nokid']) {
    t.equal((await post(app, '/create', { session_id: id, instructions: `work for ${id}` })).statusCode, 200)
  }
  await app.close()
  // A kid no key can have (the pattern refuses it): damage, not a key to add back.
  for (const [id, kid] of [['badkid', 'bad kid!'], ['nokid', '']]) {
    const doc = await readJson(join(dir, `${id}.json`))
    doc.sealed.kid = kid
    await writeFile(join(dir, `${id}.json`), JSON.stringify(doc, null, 2) + '\n')
  }
  const flip = async (id: string, field: 'data' | 'tag' | 'iv'): Promise<void> => {
    const doc = await readJson(join(dir, `${id}.json`))
    const bytes = Buffer.from(doc.sealed[field], 'base64')
    bytes[0] = (bytes[0] as number) ^ 1
    doc.sealed[field] = bytes.toString('base64')
    await writeFile(join(dir, `${id}.json`), JSON.stringify(doc))
  }
  await flip('data', 'data')
  await flip('tag', 'tag')
  await flip('iv', 'iv')
  // Swapped names: the clear id no longer matches the name.
  const a = await readFile(join(dir, 'swap-a.json'))
  await writeFile(join(dir, 'swap-a.json'), await readFile(join(dir, 'swap-b.json')))
  await writeFile(join(dir, 'swap-b.json'), a)
  // Copied under another name with the clear id edited to match: the associated data refuses it.
  const copied = await readJson(join(dir, 'good.json'))
  await writeFile(join(dir, 'relabel.json'), JSON.stringify({ ...copied, session_id: 'relabel' }))

  const store = new FileSessionStore({ dir, keyring: Keyring.parse(KEYS_1) })
  const result = await store.loadAll({ concurrency: 1 })
  t.strictSame(result.sessions.map((s) => s.file.session_id), ['good'])
  const reasons = Object.fromEntries(result.failures.map((f) => [f.name, f.reason]))
  for (const name of ['data.json', 'tag.json', 'iv.json', 'relabel.json']) t.match(reasons[name], /authentication failed/, name)
  for (const name of ['swap-a.json', 'swap-b.json']) t.match(reasons[name], /does not match its file name/, name)
  for (const name of ['badkid.json', 'nokid.json']) t.match(reasons[name], /sealed file format at '\/sealed\/kid'/, name)
  t.equal((await readdir(join(dir, 'corrupt'))).length, 8, 'each is kept in corrupt/')

  // The right kid with the wrong key: no file under it opens, so the key is wrong, not the files.
  const other = await tempDir(t)
  const copiedText = JSON.stringify(copied)
  await writeFile(join(other, 'good.json'), copiedText)
  await writeFile(join(other, 'more.json'), (await readFile(join(dir, 'good.json'), 'utf8')).replace('"good"', '"more"'))
  const wrong = new FileSessionStore({ dir: other, keyring: Keyring.parse(`k1:${K2}`) })
  await t.rejects(wrong.loadAll({ concurrency: 1 }), { code: 'ENCRYPTION_KEY_UNAVAILABLE', message: /key 'k1' opens none of the 2 sessions sealed under it/ })
  t.equal(await readFile(join(other, 'good.json'), 'utf8'), copiedText, 'the files are left untouched')
  t.notOk((await readdir(other)).includes('corrupt'), 'nothing set aside')
})

t.test('sealed files laid out otherwise open alike (compact, fields reordered, escapes, line breaks in the data); a data string that is not all base64, or a second data key, does not', async (t) => {
  const dir = await tempDir(t)
  const app = await build(t, { dir, config: { TASK_ENCRYPTION_KEYS: KEYS_1 } })
  const ids = ['pretty', 'compact', 'reordered', 'escaped', 'wrapped', 'not-base64', 'two-data']
  for (const id of ids) t.equal((await post(app, '/create', { session_id: id, instructions: `work for ${id}` })).statusCode, 200)
  await app.close()
  const rewrite = async (id: string, text: (doc: any) => string): Promise<void> => {
    await writeFile(join(dir, `${id}.json`), text(await readJson(join(dir, `${id}.json`))))
  }
  await rewrite('compact', (doc) => JSON.stringify(doc))
  await rewrite('reordered', ({ sealed, ...clear }) => JSON.stringify({ sealed: { data: sealed.data, tag: sealed.tag, iv: sealed.iv, kid: sealed.kid, alg: sealed.alg, v: sealed.v }, ...clear }, null, 4))
  // JSON may escape any "/" as "\/", and base64 has them.
  await rewrite('escaped', (doc) => {
    t.ok(doc.sealed.data.includes('/'), 'the data has a / to escape')
    return JSON.stringify(doc).replace(/"data":"([^"]*)"/u, (_, data: string) => `"data":"${data.replaceAll('/', '\\/')}"`)
  })
  // Base64 decoders skip line breaks (a tool that wraps at 76 columns).
  await rewrite('wrapped', (doc) => JSON.stringify({ ...doc, sealed: { ...doc.sealed, data: doc.sealed.data.replace(/(.{76})/gu, '$1\n') } }))
  await rewrite('not-base64', (doc) => JSON.stringify({ ...doc, sealed: { ...doc.sealed, data: `${doc.sealed.data.slice(0, 100)}!${doc.sealed.data.slice(101)}` } }))
  // JSON.parse keeps the last of two keys: the empty one, which does not open.
  await rewrite('two-data', (doc) => JSON.stringify(doc).replace(/\}\}$/u, ',"data":""}}'))
  const expected = ['compact', 'escaped', 'pretty', 'reordered', 'wrapped']
  for (const concurrency of [1, 2]) {
    const store = new FileSessionStore({ dir, keyring: Keyring.parse(KEYS_1) })
    const result = await store.loadAll({ concurrency })
    t.strictSame(result.sessions.map((s) => s.file.session_id).sort(), expected, `${concurrency} reader(s): these open`)
    for (const { file } of result.sessions) t.equal(file.session.tasks[0]?.instruction, `work for ${file.session_id}`, `${file.session_id}: its content`)
    t.strictSame(Object.fromEntries(result.failures.map((f) => [f.name, /authentication failed/u.test(f.reason)])), { 'not-base64.json': true, 'two-data.json': true }, 'these are set aside as not authentic')
    await store.close()
    // Put back for the next round: the failures were moved to corrupt/.
    for (const name of ['not-base64.json', 'two-data.json']) {
      const [moved] = (await readdir(join(dir, 'corrupt'))).filter((entry) => entry.startsWith(name.replace('.json', '')))
      await writeFile(join(dir, name), await readFile(join(dir, 'corrupt', moved as string)))
    }
    await rm(join(dir, 'corrupt'), { recursive: true })
  }
})

t.test('a kid that is not configured stops the boot, names the kid and the count, and touches nothing', async (t) => {
  const dir = await tempDir(t)
  let app = await build(t, { dir, config: { TASK_ENCRYPTION_KEYS: `old:${K2}` } })
  for (const id of ['one', 'two']) await post(app, '/create', { session_id: id, instructions: 'x' })
  await app.close()
  const before = await Promise.all(['one.json', 'two.json'].map((name) => readFile(join(dir, name))))
  for (const keys of [KEYS_1, '']) {
    const booting = await buildApp({ readEnvironment: false, config: { TASK_STORAGE_DIR: dir, TASK_ENCRYPTION_KEYS: keys } })
    app = booting
    await t.rejects(async () => { await booting.ready() }, { code: 'ENCRYPTION_KEY_UNAVAILABLE', message: /2 sessions need key 'old'/ }, `keys '${keys === '' ? '(none)' : 'k1'}'`)
    await app.close().catch(() => {})
  }
  const after = await Promise.all(['one.json', 'two.json'].map((name) => readFile(join(dir, name))))
  t.ok(after.every((data, i) => data.equals(before[i] as Buffer)), 'the files are untouched')
  t.notOk((await readdir(dir)).includes('corrupt'), 'nothing set aside')
})

t.test('a boot that a missing key stops still logs the damaged files it had set aside by then', async (t) => {
  const dir = await tempDir(t)
  const app = await build(t, { dir, config: { TASK_ENCRYPTION_KEYS: `old:${K2}` } })
  await post(app, '/create', { session_id: 'kept', instructions: 'x' })
  await app.close()
  await writeFile(join(dir, 'broken.json'), '{ "session_id": "broken", ')
  const log = memoryLog()
  const booting = await buildApp({ readEnvironment: false, logger: log.logger, config: { TASK_STORAGE_DIR: dir, TASK_ENCRYPTION_KEYS: KEYS_1 } })
  await t.rejects(async () => { await booting.ready() }, { code: 'ENCRYPTION_KEY_UNAVAILABLE' })
  await booting.close().catch(() => {})
  t.match(await readdir(join(dir, 'corrupt')), [/^broken\.json\./], 'the damaged file was set aside before the boot stopped')
  const told = log.lines().find((line) => line.msg === 'Could not load a task session; set aside')
  t.match(told, { level: 50, file: 'broken.json', moved_to: /corrupt/ }, 'and the log says where it went')
})

t.test('archived files a keyring cannot open (a wrong or a dropped key) stay where they are; lists and retention go on over the rest', async (t) => {
  const dir = await tempDir(t)
  const DAY = 86_400_000
  let app = await build(t, { dir, config: { TASK_ENCRYPTION_KEYS: `old:${K1}` } })
  for (const id of ['aged', 'fresh']) {
    t.equal((await post(app, '/create', { session_id: id, instructions: `work for ${id}` })).statusCode, 200)
    t.equal((await post(app, '/execute-all', { session_id: id })).statusCode, 200)
  }
  t.same((await post(app, '/archive', { older_than_days: 0 })).json().archived_ids.sort(), ['aged', 'fresh'])
  await app.close()
  const archived = async (): Promise<string[]> => (await readdir(join(dir, 'archive'))).sort()
  const names = await archived()
  const agedName = names.find((name) => name.startsWith('aged.')) as string
  const agedBytes = await readFile(join(dir, 'archive', agedName))
  // A rotation without `seal`, and a typo in the old key: only archived files are under it.
  // The key check the folder keeps for 'old' stops that boot.
  await t.rejects((async () => { await (await buildApp({ readEnvironment: false, config: { TASK_STORAGE_DIR: dir, TASK_ENCRYPTION_KEYS: `new:${K2},old:${key()}` } })).ready() })(),
    { code: 'ENCRYPTION_KEY_UNAVAILABLE', message: /key 'old' is not the key/ })
  // A folder from before key checks has none: its archived files are judged one by one.
  await writeFile(join(dir, '.taskvault'), '{"format":1}\n')
  app = await build(t, { dir, config: { TASK_ENCRYPTION_KEYS: `new:${K2},old:${key()}` } })
  const listed = await get(app, '/list?session_id=all&archived=include')
  t.equal(listed.statusCode, 200, 'a list over the archive answers')
  t.same(listed.json().sessions, [], 'without the files that do not open')
  const one = await get(app, '/progress?session_id=aged')
  t.equal(one.statusCode, 503, 'the session itself answers that its key is wrong')
  t.match(one.json(), { code: 'ENCRYPTION_KEY_UNAVAILABLE', message: /does not open under key 'old'.*left in place/ })
  // A delete would destroy what the right key may yet open: refused as the read is, the file kept.
  const removal = await app.inject({ method: 'DELETE', url: '/api/v1/tasks/sessions/aged' })
  t.equal(removal.statusCode, 503, 'a delete of the session under a wrong key is refused')
  t.match(removal.json(), { code: 'ENCRYPTION_KEY_UNAVAILABLE', message: /does not open under key 'old'/ })
  await app.close()
  // So too as the first request after a start (no list or read has tried the file yet), and while
  // the file cannot be read at all (EMFILE): unknown is not deletable.
  const faults = faultFs()
  app = await build(t, { dir, fs: faults, config: { TASK_ENCRYPTION_KEYS: `new:${K2},old:${key()}` } })
  const first = await app.inject({ method: 'DELETE', url: '/api/v1/tasks/sessions/aged' })
  t.equal(first.statusCode, 503, 'a delete as the first request is refused too')
  t.match(first.json(), { code: 'ENCRYPTION_KEY_UNAVAILABLE', message: /does not open under key 'old'/ })
  faults.fail('open', 'EMFILE', { path: (path) => path.endsWith(`archive/${agedName}`) })
  const unreadable = await app.inject({ method: 'DELETE', url: '/api/v1/tasks/sessions/aged' })
  t.equal(unreadable.statusCode, 503, 'a delete while the file cannot be read is refused')
  faults.heal()
  const documented = (await app.inject({ method: 'GET', url: '/documentation/json' })).json().paths
  for (const path of ['/api/v1/tasks/progress', '/api/v1/tasks/list']) t.ok(documented[path].get.responses['503'] !== undefined, `the API document lists that 503 for ${path}`)
  t.same(await archived(), names, 'nothing left archive/')
  t.notOk((await readdir(dir)).includes('corrupt'), 'nothing set aside')
  t.equal((await post(app, '/create', { session_id: 'other', instructions: 'under the new key' })).statusCode, 200)
  t.equal((await post(app, '/execute-all', { session_id: 'other' })).statusCode, 200)
  t.same((await post(app, '/archive', { older_than_days: 0 })).json().archived_ids, ['other'], 'an archive pass goes on over the rest')
  await app.close()
  // The old key dropped, and 100 days later with a retention of 30: the files under no key stay,
  // the session under the new key goes past retention.
  app = await build(t, { dir, clock: () => new Date(Date.now() + 100 * DAY), config: { TASK_ENCRYPTION_KEYS: `new:${K2}`, TASK_ARCHIVE_RETENTION_DAYS: 30 } })
  t.equal((await post(app, '/create', { session_id: 'later', instructions: 'more' })).statusCode, 200)
  t.equal((await post(app, '/execute-all', { session_id: 'later' })).statusCode, 200)
  // The pass at start runs retention over the archive (the boot does not wait for it; a removal
  // renames the copy to a temp name first): the files under no key do not stop it.
  await waitFor('the pass at start to delete the session past retention', async () => (await archived()).join() === names.join())
  t.same(await archived(), names, 'the pass at start deleted the session past retention, and kept the files under no key')
  const pass = await post(app, '/archive', { older_than_days: 0 })
  t.equal(pass.statusCode, 200, 'an archive and retention pass answers')
  t.same(pass.json().archived_ids, ['later'])
  t.same((await get(app, '/list?session_id=all&archived=include')).statusCode, 200)
  const refused = await app.inject({ method: 'DELETE', url: '/api/v1/tasks/sessions/aged' })
  t.equal(refused.statusCode, 503, 'a delete of the session under the missing key is refused')
  t.match(refused.json(), { code: 'ENCRYPTION_KEY_UNAVAILABLE', message: /'old'/ })
  t.ok((await readFile(join(dir, 'archive', agedName))).equals(agedBytes), 'the file under the missing key is untouched')
  t.notOk((await readdir(dir)).includes('corrupt'), 'nothing set aside')
})

t.test('retention over a session whose older archived copy is under a dropped key: the session waits for its key, whole, and the pass does not fail', async (t) => {
  const dir = await tempDir(t)
  const DAY = 86_400_000
  let app = await build(t, { dir, config: { TASK_ENCRYPTION_KEYS: `old:${K1}` } })
  t.equal((await post(app, '/create', { session_id: 'multi', instructions: 'one' })).statusCode, 200)
  t.equal((await post(app, '/execute-all', { session_id: 'multi' })).statusCode, 200)
  t.same((await post(app, '/archive', { older_than_days: 0 })).json().archived_ids, ['multi'])
  await app.close()
  // Brought back under a new key while the old copy could not be removed (it stays, older), then archived again.
  const faults = faultFs()
  faults.fail('unlink', 'EIO', { path: (path) => path.endsWith('archive/multi.json'), times: 1 })
  app = await build(t, { dir, fs: faults, config: { TASK_ENCRYPTION_KEYS: `new:${K2},old:${K1}` } })
  t.equal((await post(app, '/create', { session_id: 'multi', instructions: 'two' })).statusCode, 200)
  t.equal((await post(app, '/execute-all', { session_id: 'multi' })).statusCode, 200)
  t.same((await post(app, '/archive', { older_than_days: 0 })).json().archived_ids, ['multi'])
  await app.close()
  const copies = (await readdir(join(dir, 'archive'))).filter((name) => name.startsWith('multi')).sort()
  t.equal(copies.length, 2, `two copies: ${copies.join(', ')}`)
  // The old key dropped (a folder from before key checks), 100 days later, a retention of 30.
  await writeFile(join(dir, '.taskvault'), '{"format":1}\n')
  app = await build(t, { dir, clock: () => new Date(Date.now() + 100 * DAY), config: { TASK_ENCRYPTION_KEYS: `new:${K2}`, TASK_ARCHIVE_RETENTION_DAYS: 30, TASK_ARCHIVE_DAYS: 0 } })
  const pass = await post(app, '/archive', { older_than_days: 0 })
  t.equal(pass.statusCode, 200, 'the pass answers 200, not a failure for the copy waiting for its key')
  t.same((await readdir(join(dir, 'archive'))).filter((name) => name.startsWith('multi')).sort(), copies, 'both copies stay: the one under the dropped key is not destroyed')
})

t.test('an archived file that does not open under a key proven right at the restore is set aside as damaged', async (t) => {
  const dir = await tempDir(t)
  let app = await build(t, { dir, config: { TASK_ENCRYPTION_KEYS: KEYS_1 } })
  for (const id of ['active', 'arch']) t.equal((await post(app, '/create', { session_id: id, instructions: 'x' })).statusCode, 200)
  t.equal((await post(app, '/execute-all', { session_id: 'arch' })).statusCode, 200)
  t.same((await post(app, '/archive', { older_than_days: 0 })).json().archived_ids, ['arch'])
  await app.close()
  const [name] = await readdir(join(dir, 'archive'))
  const doc = await readJson(join(dir, 'archive', name as string))
  const data = Buffer.from(doc.sealed.data, 'base64')
  data[0] = (data[0] as number) ^ 1
  await writeFile(join(dir, 'archive', name as string), JSON.stringify({ ...doc, sealed: { ...doc.sealed, data: data.toString('base64') } }))
  // 'active' opens under k1 at the restore: the key is right, so the archived file is damaged.
  app = await build(t, { dir, config: { TASK_ENCRYPTION_KEYS: KEYS_1 } })
  t.equal((await get(app, '/progress?session_id=arch')).statusCode, 404, 'the damaged copy is not served')
  t.same(await readdir(join(dir, 'archive')), [], 'it left archive/')
  t.equal((await readdir(join(dir, 'corrupt'))).length, 1, 'into corrupt/')
  t.equal((await post(app, '/create', { session_id: 'arch', instructions: 'again' })).statusCode, 200, 'the id can be used again')
})

t.test('a tampered active file under a kid whose only file that opens is archived is set aside; the boot goes on', async (t) => {
  const dir = await tempDir(t)
  let app = await build(t, { dir, config: { TASK_ENCRYPTION_KEYS: KEYS_1 } })
  for (const id of ['arch', 'active']) t.equal((await post(app, '/create', { session_id: id, instructions: 'x' })).statusCode, 200)
  t.equal((await post(app, '/execute-all', { session_id: 'arch' })).statusCode, 200)
  t.same((await post(app, '/archive', { older_than_days: 0 })).json().archived_ids, ['arch'])
  await app.close()
  const doc = await readJson(join(dir, 'active.json'))
  const data = Buffer.from(doc.sealed.data, 'base64')
  data[0] = (data[0] as number) ^ 1
  await writeFile(join(dir, 'active.json'), JSON.stringify({ ...doc, sealed: { ...doc.sealed, data: data.toString('base64') } }))
  // The archived file opens under k1: the key is right, so the active file is what changed.
  app = await build(t, { dir, config: { TASK_ENCRYPTION_KEYS: KEYS_1 } })
  t.equal((await get(app, '/progress?session_id=active')).statusCode, 404, 'the tampered file is not served')
  t.equal((await readdir(join(dir, 'corrupt'))).length, 1, 'it is in corrupt/')
  t.equal((await get(app, '/progress?session_id=arch')).statusCode, 200, 'the archived session is served')
  t.equal((await post(app, '/create', { session_id: 'active', instructions: 'again' })).statusCode, 200, 'the id can be used again')

  // With only a tampered archived file under the kid, nothing proves the key: the boot stops, files untouched.
  const other = await tempDir(t)
  await mkdir(join(other, 'archive'))
  const archivedName = (await readdir(join(dir, 'archive')))[0] as string
  const archivedDoc = await readJson(join(dir, 'archive', archivedName))
  const archivedData = Buffer.from(archivedDoc.sealed.data, 'base64')
  archivedData[0] = (archivedData[0] as number) ^ 1
  await writeFile(join(other, 'archive', archivedName), JSON.stringify({ ...archivedDoc, sealed: { ...archivedDoc.sealed, data: archivedData.toString('base64') } }))
  await writeFile(join(other, 'active.json'), JSON.stringify({ ...doc, sealed: { ...doc.sealed, data: data.toString('base64') } }))
  const wrong = new FileSessionStore({ dir: other, keyring: Keyring.parse(KEYS_1) })
  await t.rejects(wrong.loadAll({ concurrency: 1 }), { code: 'ENCRYPTION_KEY_UNAVAILABLE', message: /key 'k1' opens none of the 1 sessions sealed under it/ })
  t.same(await readdir(other), ['active.json', 'archive'], 'nothing set aside')
})

t.test('a tampered file under a kid whose key the marker\'s check proves is set aside, even as the only file under it: the boot goes on, and the CLI agrees', async (t) => {
  const dir = await tempDir(t)
  let app = await build(t, { dir, config: { TASK_ENCRYPTION_KEYS: KEYS_1 } })
  t.equal((await post(app, '/create', { session_id: 'only', instructions: 'x' })).statusCode, 200)
  await app.close()
  t.match(await readJson(join(dir, '.taskvault')), { key_checks: { k1: /./ } }, 'the check of k1 is kept')
  const doc = await readJson(join(dir, 'only.json'))
  const data = Buffer.from(doc.sealed.data, 'base64')
  data[0] = (data[0] as number) ^ 1
  await writeFile(join(dir, 'only.json'), JSON.stringify({ ...doc, sealed: { ...doc.sealed, data: data.toString('base64') } }))
  // No file under k1 opens, yet the check says k1's key is the one the folder was given: the file changed.
  const validate = await taskvault(['validate', dir], { env: { TASK_ENCRYPTION_KEYS: KEYS_1 } })
  t.equal(validate.code, 1, 'validate reports it bad')
  t.match(validate.stdout, /only\.json \(sealed, key k1\): authentication failed/)
  t.notMatch(validate.stdout, /left in place/, 'as damaged, not as a sign of a wrong key')
  const stats = await taskvault(['stats', dir], { env: { TASK_ENCRYPTION_KEYS: KEYS_1 } })
  t.equal(stats.code, 0, `stats counts the rest (${stats.stderr.trim()})`)
  app = await build(t, { dir, config: { TASK_ENCRYPTION_KEYS: KEYS_1 } })
  t.equal((await get(app, '/progress?session_id=only')).statusCode, 404, 'the boot goes on; the tampered file is not served')
  t.equal((await readdir(join(dir, 'corrupt'))).length, 1, 'it is in corrupt/')
  t.equal((await post(app, '/create', { session_id: 'only', instructions: 'again' })).statusCode, 200, 'the id can be used again')
})

t.test('a key check per kid in the folder\'s marker: another key under a kid stops the boot, with or without sessions', async (t) => {
  const dir = await tempDir(t)
  const boot = async (keys: string): Promise<void> => {
    const app = await buildApp({ readEnvironment: false, config: { TASK_STORAGE_DIR: dir, TASK_ENCRYPTION_KEYS: keys } })
    await app.ready()
    await app.close()
  }
  await boot(KEYS_1)
  const marker = await readFile(join(dir, '.taskvault'), 'utf8')
  t.match(JSON.parse(marker), { format: 1, key_checks: { k1: /^[A-Za-z0-9+/]{43}=$/ } }, 'the check is kept, with no session yet')
  t.notOk(marker.includes(K1), 'not the key')
  // A typo in the secret: no session to find it by, yet what it sealed the right key would never open.
  await t.rejects(boot(`k1:${K2}`), { code: 'ENCRYPTION_KEY_UNAVAILABLE', message: /key 'k1' is not the key storage folder .* was first given under that kid/ })
  t.equal(await readFile(join(dir, '.taskvault'), 'utf8'), marker, 'the marker is unchanged')
  t.same((await readdir(dir)).filter((name) => name.endsWith('.json')), [], 'nothing written')
  // Rotation: a new kid first, the old one kept: both checked, the new one added.
  await boot(`k2:${K2},${KEYS_1}`)
  t.same(Object.keys(JSON.parse(await readFile(join(dir, '.taskvault'), 'utf8')).key_checks).sort(), ['k1', 'k2'])
  await t.rejects(boot(`k1:${K2}`), { code: 'ENCRYPTION_KEY_UNAVAILABLE' }, 'still refused after the rotation')
  await boot(KEYS_1)
  // A folder from before key checks (its marker has none) takes them at its next restore,
  // unless the disk is full then: the boot goes on, and a later one keeps them.
  await writeFile(join(dir, '.taskvault'), '{"format":1}\n')
  const fs = faultFs()
  fs.fail('open', 'ENOSPC', { path: (path) => path.includes(`${sep}.taskvault.`) })
  const full = await build(t, { dir, fs, config: { TASK_ENCRYPTION_KEYS: KEYS_1 } })
  t.equal((await get(full, '/stats')).statusCode, 200, 'a full disk does not stop the boot')
  await full.close()
  t.equal(await readFile(join(dir, '.taskvault'), 'utf8'), '{"format":1}\n')
  await boot(KEYS_1)
  t.match(JSON.parse(await readFile(join(dir, '.taskvault'), 'utf8')), { key_checks: { k1: /./ } })
})

t.test('kids named like what every object inherits (constructor, __proto__, toString) are kids like any other: boot, seal, count, check, rotate', async (t) => {
  const dir = await tempDir(t)
  const keys = `constructor:${K1},__proto__:${K2}`
  let app = await build(t, { dir, config: { TASK_ENCRYPTION_KEYS: keys } })
  t.equal((await post(app, '/create', { session_id: 'odd', instructions: SECRET })).statusCode, 200)
  t.equal((await readJson(join(dir, 'odd.json'))).sealed.kid, 'constructor')
  const encryption = (await get(app, '/stats')).json().encryption
  t.match(encryption, { enabled: true, active_kid: 'constructor', plaintext_sessions: 0 })
  // Entries, not an object literal: `{ __proto__: 0 }` would set no key at all.
  t.same(Object.entries(encryption.sealed_sessions).sort(), [['__proto__', 0], ['constructor', 1]], 'each kid counted under its own name')
  await app.close()
  t.same(Object.keys((await readJson(join(dir, '.taskvault'))).key_checks), ['constructor'], 'a key check for the sealing kid')
  await t.rejects(buildApp({ readEnvironment: false, config: { TASK_STORAGE_DIR: dir, TASK_ENCRYPTION_KEYS: `constructor:${K2}` } }).then(async (other) => { await other.ready(); await other.close() }),
    { code: 'ENCRYPTION_KEY_UNAVAILABLE', message: /key 'constructor' is not the key/ }, 'another key under it is refused')
  // A rotation to a kid named __proto__: it seals, and its check is kept and checked like any.
  const K3 = key()
  app = await build(t, { dir, config: { TASK_ENCRYPTION_KEYS: `__proto__:${K3},toString:${key()},constructor:${K1}` } })
  t.equal((await get(app, '/list?session_id=odd')).json().tasks[0].instruction, SECRET)
  t.equal((await post(app, '/create', { session_id: 'odd', instructions: 'more' })).statusCode, 200)
  t.equal((await readJson(join(dir, 'odd.json'))).sealed.kid, '__proto__')
  await app.close()
  t.same(Object.keys((await readJson(join(dir, '.taskvault'))).key_checks).sort(), ['__proto__', 'constructor'])
  await t.rejects(buildApp({ readEnvironment: false, config: { TASK_STORAGE_DIR: dir, TASK_ENCRYPTION_KEYS: `__proto__:${K1}` } }).then(async (other) => { await other.ready(); await other.close() }),
    { code: 'ENCRYPTION_KEY_UNAVAILABLE', message: /key '__proto__' is not the key/ }, 'another key under __proto__ is refused')
  app = await build(t, { dir, config: { TASK_ENCRYPTION_KEYS: `__proto__:${K3}` } })
  t.same((await get(app, '/list?session_id=odd')).json().tasks.map((task: { instruction: string }) => task.instruction), [SECRET, 'more'], 'the old key can go once all is sealed under the new one')
  t.equal(({} as Record<string, unknown>).polluted, undefined, 'nothing reached Object.prototype')
})

t.test('a mistyped sealing key over a folder whose sessions are all archived stops the boot; tools never pin a key', async (t) => {
  const dir = await tempDir(t)
  const boot = async (keys: string): Promise<void> => {
    const app = await buildApp({ readEnvironment: false, config: { TASK_STORAGE_DIR: dir, TASK_ENCRYPTION_KEYS: keys } })
    try {
      await app.ready()
    } finally {
      // A boot that failed still lets the folder's lock go.
      await app.close()
    }
  }
  const app = await build(t, { dir, config: { TASK_ENCRYPTION_KEYS: KEYS_1 } })
  t.equal((await post(app, '/create', { session_id: 'old', instructions: 'x' })).statusCode, 200)
  t.equal((await post(app, '/execute-all', { session_id: 'old' })).statusCode, 200)
  t.same((await post(app, '/archive', { older_than_days: 0 })).json().archived_ids, ['old'])
  await app.close()
  // From before key checks: nothing but the archived file can tell the key is wrong.
  await writeFile(join(dir, '.taskvault'), '{"format":1}\n')
  await t.rejects(boot(`k1:${K2}`), { code: 'ENCRYPTION_KEY_UNAVAILABLE', message: /key 'k1', which seals every write, opens none of the archived sessions sealed under it/ })
  t.equal(await readFile(join(dir, '.taskvault'), 'utf8'), '{"format":1}\n', 'no check kept for the wrong key')
  // A tool run with a new key first, mistyped or not, compares checks but never adds one.
  const archived = await taskvault(['archive', dir], { env: { TASK_ENCRYPTION_KEYS: `k2:${key()},${KEYS_1}` } })
  t.equal(archived.code, 0, archived.stderr)
  t.equal(await readFile(join(dir, '.taskvault'), 'utf8'), '{"format":1}\n', 'the tool kept no check')
  await boot(KEYS_1)
  t.same(Object.keys(JSON.parse(await readFile(join(dir, '.taskvault'), 'utf8')).key_checks), ['k1'], 'the server keeps the proven one')
})

t.test('seal with a mistyped key under the kid some files are sealed under writes nothing, key check or not; the right key then seals the rest', async (t) => {
  const dir = await tempDir(t)
  for (const [keys, ids] of [[null, ['plain_1', 'plain_2']], [KEYS_1, ['sealed_1', 'sealed_2']]] as const) {
    const app = await build(t, { dir, config: keys === null ? {} : { TASK_ENCRYPTION_KEYS: keys } })
    for (const id of ids) t.equal((await post(app, '/create', { session_id: id, instructions: `work for ${id}` })).statusCode, 200)
    await app.close()
  }
  // A seal cut short before any server booted with the key keeps no check of it.
  await writeFile(join(dir, '.taskvault'), '{"format":1}\n')
  const bytes = async (): Promise<string[]> => Promise.all((await readdir(dir)).sort().map(async (name) => `${name}:${await readFile(join(dir, name), 'utf8')}`))
  const before = await bytes()
  const wrong = await taskvault(['seal', dir], { env: { TASK_ENCRYPTION_KEYS: `k1:${K2}` } })
  t.equal(wrong.code, 1)
  t.match(wrong.stdout + wrong.stderr, /cannot seal: key 'k1' opens none of the 2 files sealed under it; .*nothing was written/)
  t.notMatch(wrong.stdout + wrong.stderr, K2, 'the key is not printed')
  t.same(await bytes(), before, 'nothing was written')
  const right = await taskvault(['seal', dir], { env: { TASK_ENCRYPTION_KEYS: KEYS_1 } })
  t.equal(right.code, 0, right.stderr)
  t.match(right.stdout, /Sealed 2 files under key k1 \(2 already were\)/)
  const keyring = Keyring.parse(KEYS_1)
  for (const id of ['plain_1', 'plain_2', 'sealed_1', 'sealed_2']) {
    t.equal(readSessionDocument(`${id}.json`, await readFile(join(dir, `${id}.json`), 'utf8'), id, keyring).kid, 'k1', `${id} opens under k1`)
  }
})

t.test('seal stops once another writer takes the folder: exit 1 naming the lost lock, the other writer\'s lock left in place', async (t) => {
  const dir = await tempDir(t)
  await markAsTaskvault(dir)
  const count = 3000
  for (let i = 0; i < count; i++) await writeFile(join(dir, `p_${i}.json`), storedSession(`p_${i}`, ['Pending'], daysAgo(1)), { mode: 0o600 })
  // The lock is checked every 400 ms (the least stale time allows): the seal of 3,000 files takes seconds.
  const running = taskvault(['seal', dir], { env: { TASK_ENCRYPTION_KEYS: KEYS_1, TASK_LOCK_REFRESH_MS: '400', TASK_LOCK_STALE_MS: '1000' } })
  const lock = join(dir, LOCK_FILE)
  await waitFor('the seal holds the lock', async () => readlink(lock).then((target) => JSON.parse(target).pid !== process.pid, () => false))
  await sleep(300)
  // Another writer's lock, put in place the way a lock is taken: a new link renamed over the old.
  const other = JSON.stringify({ pid: process.pid, host: hostname(), since: new Date().toISOString() })
  await symlink(other, `${lock}.other`)
  await rename(`${lock}.other`, lock)
  const sealing = await running
  t.equal(sealing.code, 1, sealing.stdout)
  t.match(sealing.stderr, /lost the lock of .* to another writer, so stopped: every file written is whole/)
  t.equal(await readlink(lock), other, 'the other writer\'s lock is still there')
  let sealed = 0
  for (let i = 0; i < count; i++) if ((await readFile(join(dir, `p_${i}.json`), 'utf8')).includes('"sealed"')) sealed++
  t.ok(sealed < count, `stopped before the end: ${sealed} of ${count} sealed`)
})

t.test('seal run again as pid 1 (a container) after a kill -9 left the first run\'s temp files: it finishes', { skip: process.getuid?.() !== 0 && process.env.CI !== 'true' ? 'pid 1 needs root (unshare)' : false }, async (t) => {
  const dir = await tempDir(t)
  await markAsTaskvault(dir)
  await mkdir(join(dir, 'archive'))
  await writeFile(join(dir, 'a.json'), storedSession('a', ['Pending'], daysAgo(1)), { mode: 0o600 })
  await writeFile(join(dir, 'archive', 'b.json'), storedSession('b', ['Completed'], daysAgo(40)), { mode: 0o600 })
  // What a first run as pid 1 leaves when killed mid-write: its temp files, numbered from 1.
  for (const name of ['.a.1.1.tmp', '.a.1.2.tmp', 'archive/.b.1.1.tmp', 'archive/.b.1.2.tmp']) await writeFile(join(dir, name), '{"half')
  const sealing = await taskvault(['seal', dir], { env: { TASK_ENCRYPTION_KEYS: KEYS_1 }, pid1: true })
  t.equal(sealing.code, 0, sealing.stderr)
  t.match(sealing.stdout, /Sealed 2 files under key k1/)
  const keyring = Keyring.parse(KEYS_1)
  t.equal(readSessionDocument('a.json', await readFile(join(dir, 'a.json'), 'utf8'), 'a', keyring).kid, 'k1')
  t.equal(readSessionDocument('b.json', await readFile(join(dir, 'archive', 'b.json'), 'utf8'), 'b', keyring).kid, 'k1')
})

t.test('validate --fix sets aside what a right key does not open, and nothing when the key under a kid opens none', async (t) => {
  const dir = await tempDir(t)
  const app = await build(t, { dir, config: { TASK_ENCRYPTION_KEYS: KEYS_1 } })
  for (const id of ['good', 'bad']) t.equal((await post(app, '/create', { session_id: id, instructions: `work for ${id}` })).statusCode, 200)
  await app.close()
  const doc = await readJson(join(dir, 'bad.json'))
  const tag = Buffer.from(doc.sealed.tag, 'base64')
  tag[0] = (tag[0] as number) ^ 1
  await writeFile(join(dir, 'bad.json'), JSON.stringify({ ...doc, sealed: { ...doc.sealed, tag: tag.toString('base64') } }))
  const before = (await readdir(dir)).sort()

  const wrong = await taskvault(['validate', dir], { env: { TASK_ENCRYPTION_KEYS: `k1:${K2}` } })
  t.equal(wrong.code, 1, 'both reported bad')
  t.match(wrong.stdout, /good\.json \(sealed, key k1\): authentication failed.*left in place: no file sealed under key 'k1' opens/)
  // The folder's key check for k1 refuses the wrong key before any file is looked at.
  const fixing = await taskvault(['validate', dir, '--fix'], { env: { TASK_ENCRYPTION_KEYS: `k1:${K2}` } })
  t.equal(fixing.code, 1)
  t.match(fixing.stdout + fixing.stderr, /key 'k1' is not the key storage folder .* was first given under that kid/)
  t.same((await readdir(dir)).sort(), before, 'with the wrong key nothing is moved')

  const right = await taskvault(['validate', dir, '--fix'], { env: { TASK_ENCRYPTION_KEYS: KEYS_1 } })
  t.equal(right.code, 1)
  t.match(right.stdout, /bad\.json \(sealed, key k1\): authentication failed \(moved to corrupt\//)
  t.ok((await readdir(dir)).includes('good.json') && !(await readdir(dir)).includes('bad.json'), 'with the right key the tampered file is set aside, the good one stays')
})

t.test('stats with another key under a kid the folder knows fails, as the server refuses to start', async (t) => {
  const dir = await tempDir(t)
  const app = await build(t, { dir, config: { TASK_ENCRYPTION_KEYS: KEYS_1 } })
  t.equal((await post(app, '/create', { session_id: 'a', instructions: 'work' })).statusCode, 200)
  await app.close()
  const wrong = await taskvault(['stats', dir, '--json'], { env: { TASK_ENCRYPTION_KEYS: `k1:${K2}` } })
  t.equal(wrong.code, 1, 'exit 1')
  t.match(wrong.json(), { error: { code: 'ENCRYPTION_KEY_UNAVAILABLE', message: /key 'k1' is not the key storage folder .* was first given under that kid/ } }, 'says which key')
  const right = await taskvault(['stats', dir, '--json'], { env: { TASK_ENCRYPTION_KEYS: KEYS_1 } })
  t.equal(right.code, 0, right.stderr)
  t.match(right.json(), { total_sessions: 1, storage: { failed_loads: 0 } })
  const added = await taskvault(['stats', dir], { env: { TASK_ENCRYPTION_KEYS: `k9:${K2},${KEYS_1}` } })
  t.equal(added.code, 0, 'a new kid is no mismatch')
})

t.test('seal on a disk that fills says which file it was writing and how far it got; every file stays whole, and a rerun finishes', async (t) => {
  const dir = await mountedFolder(t, '256k', 'nothing else covers the CLI on a full disk')
  if (dir === null) return
  const ids = Array.from({ length: 16 }, (_, i) => `s${i}`)
  for (const id of ids) await writeFile(join(dir, `${id}.json`), storedSession(id, ['Pending'], daysAgo(1), 'x'.repeat(3000)), { mode: 0o600 })
  await markAsTaskvault(dir)
  // Room for a few sealed copies (each written beside the file it replaces), not for all.
  const filler = join(dir, 'corrupt')
  await mkdir(filler)
  const size = await fill(join(filler, 'filler'))
  await truncate(join(filler, 'filler'), size - 24 * 1024)
  const full = await taskvault(['seal', dir], { env: { TASK_ENCRYPTION_KEYS: KEYS_1 } })
  t.equal(full.code, 1, 'exit 1')
  const said = /^taskvault: writing .*\/(s\d+)\.json failed: storage is full \(ENOSPC\); (\d+) files were sealed before it, the rest are as they were: run seal again once storage works\n$/u.exec(full.stderr)
  t.ok(said !== null, `names the file and the count: ${full.stderr}`)
  const sealedBefore = Number(said?.[2])
  const keyring = Keyring.parse(KEYS_1)
  const kids = await Promise.all(ids.map(async (id) => readSessionDocument(`${id}.json`, await readFile(join(dir, `${id}.json`), 'utf8'), id, keyring).kid))
  t.equal(kids.filter((kid) => kid === 'k1').length, sealedBefore, 'as many files are sealed as it says')
  t.same((await readdir(dir)).filter((name) => name.endsWith('.tmp')), [], 'no temp file is left')
  await rm(filler, { recursive: true })
  const rerun = await taskvault(['seal', dir, '--json'], { env: { TASK_ENCRYPTION_KEYS: KEYS_1 } })
  t.equal(rerun.code, 0, rerun.stderr)
  t.match(rerun.json(), { sealed: ids.length - sealedBefore, already: sealedBefore }, 'the rerun seals the rest')
})

t.test('plaintext and sealed sessions load side by side; a change seals a plaintext session', async (t) => {
  const dir = await tempDir(t)
  let app = await build(t, { dir })
  await post(app, '/create', { session_id: 'plain', instructions: 'was plaintext' })
  await app.close()
  app = await build(t, { dir, config: { TASK_ENCRYPTION_KEYS: KEYS_1 } })
  await post(app, '/create', { session_id: 'sealed', instructions: 'born sealed' })
  t.match((await get(app, '/stats')).json().encryption, { sealed_sessions: { k1: 1 }, plaintext_sessions: 1 })
  t.notOk('sealed' in await readJson(join(dir, 'plain.json')), 'unchanged sessions stay as they are')
  await post(app, '/execute', { session_id: 'plain' })
  t.ok('sealed' in await readJson(join(dir, 'plain.json')), 'a change seals it')
  t.match((await get(app, '/stats')).json().encryption, { sealed_sessions: { k1: 2 }, plaintext_sessions: 0 })
  const metrics = (await app.inject({ method: 'GET', url: '/metrics' })).body
  t.match(metrics, /taskvault_encryption_enabled 1/)
  t.match(metrics, /taskvault_sealed_sessions\{kid="k1"\} 2/)
})

t.test('turning keys on never strands a session saved in clear at TASK_MAX_SESSION_BYTES: its interrupted run resumes, its changes are saved sealed', async (t) => {
  const dir = await tempDir(t)
  const bound = 64 * 1024
  const config = { TASK_MAX_SESSION_BYTES: bound }
  await (await build(t, { dir, config })).close()
  // A run a crash interrupted (the task InProgress), in a session a byte short of the bound in clear.
  const stored = (instruction: string): string => storedSession('near', ['InProgress'], '2025-01-02T00:00:00.000Z', instruction)
  await writeFile(join(dir, 'near.json'), stored('x'.repeat(bound - 1 - stored('').length)))
  t.equal((await readFile(join(dir, 'near.json'))).length, bound - 1)
  const executors = { default: async () => ({ result: 'done' }) }
  let app = await build(t, { dir, executors, config: { ...config, TASK_ENCRYPTION_KEYS: KEYS_1 } })
  t.match((await get(app, '/progress?session_id=near')).json(), { pending: 1, in_progress: 0 }, 'the interrupted task is back to pending')
  t.ok('sealed' in await readJson(join(dir, 'near.json')), 'and saved sealed')
  t.match((await post(app, '/execute', { session_id: 'near' })).json(), { status: 'Completed', result: 'done' })
  t.ok((await readFile(join(dir, 'near.json'))).length > bound, 'the sealed file takes more than the bound')
  await app.close()
  app = await build(t, { dir, config: { ...config, TASK_ENCRYPTION_KEYS: KEYS_1 } })
  t.match((await get(app, '/list?session_id=near')).json().tasks, [{ status: 'Completed', interruptions: 1 }], 'restored')
})

t.test('/metrics names the active kid and counts every configured kid, 0 when no session is under it', async (t) => {
  const dir = await tempDir(t)
  let app = await build(t, { dir })
  const scrape = async (): Promise<string> => (await app.inject({ method: 'GET', url: '/metrics' })).body
  t.notMatch(await scrape(), /taskvault_encryption_active_kid\{/, 'no active kid without keys')
  await app.close()
  // Rotated: every session is under 'new' already, 'old' is still configured.
  app = await build(t, { dir, config: { TASK_ENCRYPTION_KEYS: `new:${K1},old:${K2}` } })
  await post(app, '/create', { session_id: 's', instructions: 'x' })
  const metrics = await scrape()
  t.match(metrics, /^taskvault_encryption_active_kid\{kid="new"\} 1$/m)
  t.notMatch(metrics, /taskvault_encryption_active_kid\{kid="old"\}/, 'only the active kid')
  t.match(metrics, /^taskvault_sealed_sessions\{kid="new"\} 1$/m)
  t.match(metrics, /^taskvault_sealed_sessions\{kid="old"\} 0$/m, 'the old key reads 0: the rotation is done, not unknown')
  t.match(metrics, /^taskvault_sealed_sessions\{kid=""\} 0$/m)
  const promtool = spawnSync('promtool', ['check', 'metrics'], { input: metrics, encoding: 'utf8' })
  if (promtool.error === undefined) t.equal(promtool.status, 0, `promtool check metrics: ${promtool.stdout}${promtool.stderr}`)
})

t.test('rotation: new key first, seal (kill -9 midway, then again), drop the old key; CLI validate, stats, backup and restore on sealed folders', async (t) => {
  const dir = await tempDir(t)
  const store = new FileSessionStore({ dir, keyring: Keyring.parse(`old:${K2}`) })
  await store.init()
  const ids = Array.from({ length: 1500 }, (_, i) => `s${i}`)
  const originals = new Map<string, string>()
  for (const id of ids) {
    const file = {
      session_id: id,
      created_at: '2026-01-01T00:00:00.000Z',
      updated_at: '2026-01-01T00:00:00.000Z',
      session: { session_id: id, current_index: 0, tasks: [{ id: 't1', instruction: `${SECRET} ${id}`, task_type: 'General' as const, status: 'Pending' as const, result: null, error: null, confidence: null, created_at: '2026-01-01T00:00:00.000Z', started_at: null, completed_at: null, attempts: 0 }] }
    }
    originals.set(id, JSON.stringify(file))
    await store.save(file)
  }
  await store.close()
  const rotating = { TASK_STORAGE_DIR: dir, TASK_ENCRYPTION_KEYS: `new:${K1},old:${K2}` }

  // kill -9 while it runs.
  const child = spawn(...node([CLI, 'seal']), { env: { PATH: process.env.PATH ?? '', ...rotating }, stdio: 'ignore' })
  const kidsNow = async (): Promise<string[]> => Promise.all((await readdir(dir)).filter((n) => n.endsWith('.json')).map(async (n) => (await readJson(join(dir, n))).sealed.kid))
  // seal goes in name order: s0.json is the first it re-seals. Kill as soon as it has.
  for (let waited = 0; waited < 20_000; waited += 2) {
    if ((await readJson(join(dir, 's0.json')).catch(() => null))?.sealed?.kid === 'new') break
    await sleep(2)
  }
  child.kill('SIGKILL')
  await new Promise((resolve) => child.once('close', resolve))
  const midway = await kidsNow()
  t.ok(midway.includes('new') && midway.includes('old'), `killed midway: ${midway.filter((k) => k === 'new').length} of ${ids.length} re-sealed`)
  t.equal(midway.length, ids.length, 'every session file is still there')

  const again = await taskvault(['seal', '--json'], { env: rotating })
  t.equal(again.code, 0, again.stderr)
  const report = JSON.parse(again.stdout)
  t.equal(report.sealed + report.already, ids.length, 'the rerun finishes the job and counts it')
  t.ok(report.already > 0, 'what the first run did is not done again')
  t.ok((await kidsNow()).every((kid) => kid === 'new'), 'every file is under the new key')

  // The old key can go: everything opens with the new one alone, nothing lost.
  const newOnly = { TASK_STORAGE_DIR: dir, TASK_ENCRYPTION_KEYS: `new:${K1}` }
  const reopened = new FileSessionStore({ dir, keyring: Keyring.parse(newOnly.TASK_ENCRYPTION_KEYS) })
  const loaded = await reopened.loadAll({ concurrency: 2 })
  t.equal(loaded.failures.length, 0)
  t.equal(loaded.sessions.length, ids.length)
  t.ok(loaded.sessions.every((s) => JSON.stringify(s.file) === originals.get(s.file.session_id)), 'every session is as it was')

  const validate = await taskvault(['validate', '--json'], { env: newOnly })
  t.equal(validate.code, 0)
  t.ok(JSON.parse(validate.stdout).files.every((f: { kid: string }) => f.kid === 'new'), 'validate reports each file\'s kid')
  const withoutKey = await taskvault(['validate', '--fix'], { env: { TASK_STORAGE_DIR: dir } })
  t.equal(withoutKey.code, 1)
  t.match(withoutKey.stdout, /TASK_ENCRYPTION_KEYS is not set/)
  t.equal((await readdir(dir)).filter((n) => n.endsWith('.json')).length, ids.length, 'validate --fix never moves a file sealed under a missing key')
  const keyless = join(await tempDir(t), 'keyless.tar.gz')
  const keylessRun = await taskvault(['backup', '--out', keyless, '--json'], { env: { TASK_STORAGE_DIR: dir } })
  t.equal(keylessRun.code, 0, keylessRun.stderr)
  t.equal(JSON.parse(keylessRun.stdout).active, ids.length, 'a backup without the key still carries every sealed file as it is')
  const stats = await taskvault(['stats', '--json'], { env: newOnly })
  t.equal(JSON.parse(stats.stdout).total_sessions, ids.length)
  const keylessStats = await taskvault(['stats'], { env: { TASK_STORAGE_DIR: dir } })
  t.equal(keylessStats.code, 1, 'stats without the key fails, as the server would not start, rather than counting 0')
  t.match(keylessStats.stderr, new RegExp(`${ids.length} sessions need key 'new', which TASK_ENCRYPTION_KEYS does not hold`))

  const backup = join(await tempDir(t), 'b.tar.gz')
  t.equal((await taskvault(['backup', '--out', backup], { env: newOnly })).code, 0)
  const target = join(await tempDir(t), 'restored')
  await mkdir(target)
  const restored = await taskvault(['restore', backup, target], { env: newOnly })
  t.equal(restored.code, 0, restored.stderr)
  const sample = await readJson(join(target, 's7.json'))
  t.equal(sample.sealed.kid, 'new', 'backup and restore carry envelopes as they are')
})

t.test('GET /backup with keys: every session in the tar is sealed, plaintext ones too', async (t) => {
  const dir = await tempDir(t)
  let app = await build(t, { dir })
  await post(app, '/create', { session_id: 'plain', instructions: SECRET })
  await app.close()
  app = await build(t, { dir, config: { TASK_ENCRYPTION_KEYS: KEYS_1 } })
  await post(app, '/create', { session_id: 'born', instructions: SECRET })
  const res = await app.inject({ method: 'GET', url: '/api/v1/tasks/backup' })
  t.equal(res.statusCode, 200)
  const tar = gunzipSync(res.rawPayload).toString('latin1')
  t.notOk(tar.includes('hunter2'), 'no session content in clear in the backup')
  t.equal(tar.split('"sealed"').length - 1, 2, 'both sessions are sealed envelopes')
})

t.test('no key ever appears in logs (trace), error bodies, /stats, /metrics or /documentation/json', async (t) => {
  const dir = await tempDir(t)
  const log = memoryLog('trace')
  const app = await build(t, { dir, logger: log.logger, config: { TASK_ENCRYPTION_KEYS: `k1:${K1},k2:${K2}` } })
  await post(app, '/create', { session_id: 'x', instructions: 'a' })
  await post(app, '/execute', { session_id: 'x' })
  const answers = [
    (await post(app, '/create', { session_id: 'bad id!', instructions: 'a' })).body,
    (await post(app, '/execute', { session_id: 'nope' })).body,
    (await get(app, '/stats')).body,
    (await app.inject({ method: 'GET', url: '/metrics' })).body,
    (await app.inject({ method: 'GET', url: '/documentation/json' })).body
  ]
  await app.close()
  const everything = [...answers, ...log.raw].join('\n')
  for (const secret of [K1, K2, Buffer.from(K1, 'base64').toString('hex')]) t.notOk(everything.includes(secret), 'no key, in base64 or hex')
  t.ok(log.lines().length > 10, `${log.lines().length} log lines were checked`)
})
