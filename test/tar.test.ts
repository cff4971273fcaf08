import { randomBytes } from 'node:crypto'
import { Readable, Writable } from 'node:stream'
import { gzipSync } from 'node:zlib'
import t from 'tap'
import { TarFormatError } from '../services/errors.js'
import { MAX_ENTRY_BYTES, MAX_HEADER_ENTRY_BYTES, readTarGz, writeTarGz, type TarEntry, type TarFile } from '../services/backup/tar.js'

/** The bytes `writeTarGz` produces for `files`. */
async function pack (files: TarFile[]): Promise<Buffer> {
  const chunks: Buffer[] = []
  await writeTarGz(files, new Writable({
    write (chunk: Buffer, _encoding, done) {
      chunks.push(chunk)
      done()
    }
  }))
  return Buffer.concat(chunks)
}

/** Every entry of a tar.gz, fed in chunks of `chunkSize` bytes to exercise entries split across reads. */
async function unpack (gz: Buffer, chunkSize = 65_536): Promise<TarEntry[]> {
  const chunks: Buffer[] = []
  for (let at = 0; at < gz.length; at += chunkSize) chunks.push(gz.subarray(at, at + chunkSize))
  const entries: TarEntry[] = []
  for await (const entry of readTarGz(Readable.from(chunks))) entries.push(entry)
  return entries
}

/** A plain ustar header block, for archives this module does not write itself. */
function ustarHeader (fields: { name: string, size: number, type?: string, prefix?: string }): Buffer {
  const block = Buffer.alloc(512)
  block.write(fields.name, 0, 100, 'utf8')
  block.write('0000644\0', 100, 'latin1')
  block.write('0000000\0', 108, 'latin1')
  block.write('0000000\0', 116, 'latin1')
  block.write(fields.size.toString(8).padStart(11, '0') + '\0', 124, 'latin1')
  block.write('14000000000\0', 136, 'latin1')
  block.write(fields.type ?? '0', 156, 'latin1')
  block.write('ustar\u000000', 257, 'latin1')
  if (fields.prefix !== undefined) block.write(fields.prefix, 345, 155, 'utf8')
  block.fill(0x20, 148, 156)
  let sum = 0
  for (const byte of block) sum += byte
  block.write(sum.toString(8).padStart(6, '0') + '\0 ', 148, 'latin1')
  return block
}

const pad = (data: Buffer): Buffer => Buffer.concat([data, Buffer.alloc((512 - (data.length % 512)) % 512)])

t.test('round trip: names, sizes at block edges, binary data, modes and times', async (t) => {
  const mtime = new Date('2025-03-04T05:06:07.000Z')
  const files: TarFile[] = [
    { name: 'empty.json', data: Buffer.alloc(0), mtime },
    { name: 'one.json', data: Buffer.from('x'), mtime },
    { name: 'block.json', data: randomBytes(512), mtime },
    { name: 'block-plus-one.json', data: randomBytes(513), mtime },
    { name: 'big.json', data: randomBytes(300_000), mode: 0o640, mtime },
    { name: `archive/${'a'.repeat(128)}.1700000000000.json`, data: Buffer.from('{"long": "name"}'), mtime },
    { name: 'ünïcödé ✓.json', data: Buffer.from('é✓', 'utf8'), mtime }
  ]
  const gz = await pack(files)
  t.equal(gz[0], 0x1f, 'gzip magic')
  for (const chunkSize of [7, 512, 65_536]) {
    const entries = await unpack(gz, chunkSize)
    t.same(entries.map((entry) => entry.name), files.map((file) => file.name), `names, chunks of ${chunkSize}`)
    entries.forEach((entry, i) => {
      const file = files[i] as TarFile
      t.ok(entry.data.equals(Buffer.from(file.data)), `${file.name.slice(0, 40)}: every byte`)
      t.equal(entry.type, 'file')
      t.equal(entry.mode, file.mode ?? 0o600)
      t.equal(entry.mtime.getTime(), mtime.getTime())
    })
  }
})

t.test('an empty archive is two zero blocks', async (t) => {
  t.same(await unpack(await pack([])), [])
})

t.test('reads ustar prefixes, GNU long names, folders and links written by other tools', async (t) => {
  const long = 'l'.repeat(150) + '.json'
  const tar = Buffer.concat([
    ustarHeader({ name: 'archive/', size: 0, type: '5' }),
    ustarHeader({ name: 'x.json', size: 2, prefix: 'archive' }), pad(Buffer.from('{}')),
    ustarHeader({ name: '././@LongLink', size: long.length + 1, type: 'L' }), pad(Buffer.from(long + '\0')),
    ustarHeader({ name: long.slice(0, 100), size: 1 }), pad(Buffer.from('y')),
    ustarHeader({ name: 'link.json', size: 0, type: '2' }),
    Buffer.alloc(1024)
  ])
  const entries = await unpack(gzipSync(tar))
  t.same(entries.map((entry) => [entry.name, entry.type, entry.data.toString()]), [
    ['archive/', 'directory', ''],
    ['archive/x.json', 'file', '{}'],
    [long, 'file', 'y'],
    ['link.json', 'other', '']
  ])
})

t.test('damaged archives fail with TarFormatError', async (t) => {
  const good = await pack([{ name: 'a.json', data: randomBytes(2000) }, { name: 'b.json', data: Buffer.from('b') }])
  const tar = (await import('node:zlib')).gunzipSync(good)

  const truncatedInEntry = gzipSync(tar.subarray(0, 1024))
  await t.rejects(unpack(truncatedInEntry), TarFormatError, 'cut inside an entry')
  const withoutEnd = gzipSync(tar.subarray(0, tar.length - 1024))
  await t.rejects(unpack(withoutEnd), TarFormatError, 'cut before the end marker')
  const badSum = Buffer.from(tar)
  badSum[0] = 'z'.charCodeAt(0)
  await t.rejects(unpack(gzipSync(badSum)), TarFormatError, 'a header with a wrong checksum')
  await t.rejects(unpack(Buffer.from('this is not gzip at all')), TarFormatError, 'not gzip')
  await t.rejects(unpack(good.subarray(0, good.length - 10)), TarFormatError, 'a truncated gzip stream')
})

t.test('an entry claiming more than MAX_ENTRY_BYTES is refused before anything is buffered', async (t) => {
  const hostile = gzipSync(Buffer.concat([ustarHeader({ name: 'huge.json', size: 8 * 1024 ** 3 - 1 }), Buffer.alloc(1024)]))
  await t.rejects(unpack(hostile), { name: 'TarFormatError', message: /claims 8589934591 bytes/u })
  t.ok(MAX_ENTRY_BYTES < 8 * 1024 ** 3)
  // A session sealed at the largest TASK_MAX_SESSION_BYTES (256 MiB of content, and room for a
  // run's records) takes a third more in base64: a backup of it must restore.
  const sealed = Math.ceil((256 + 16) * 1024 ** 2 / 3) * 4 + 1024
  const large = gzipSync(Buffer.concat([ustarHeader({ name: 'sealed.json', size: sealed }), Buffer.alloc(1024)]))
  await t.rejects(unpack(large), { name: 'TarFormatError', message: /^(?!.*claims)/u }, `an entry of ${sealed} bytes is not refused for its size (only cut short here)`)
})

t.test('a folder\'s or a link\'s body is passed over, not buffered, and a pax header past MAX_HEADER_ENTRY_BYTES is refused', async (t) => {
  // A link claiming 16 MiB of body (zeros: 16 KiB gzipped): nothing of it is held.
  const body = 16 * 1024 * 1024
  const tar = Buffer.concat([
    ustarHeader({ name: 'evil.json', size: body, type: '2' }), Buffer.alloc(body),
    ustarHeader({ name: 'dir/', size: body, type: '5' }), Buffer.alloc(body),
    ustarHeader({ name: 'after.json', size: 2 }), pad(Buffer.from('{}')),
    Buffer.alloc(1024)
  ])
  const entries = await unpack(gzipSync(tar))
  t.same(entries.map((entry) => [entry.name, entry.type, entry.data.length]), [['evil.json', 'other', 0], ['dir/', 'directory', 0], ['after.json', 'file', 2]], 'their bodies skipped, the next entry read')
  const pax = gzipSync(Buffer.concat([ustarHeader({ name: 'PaxHeader', size: MAX_HEADER_ENTRY_BYTES + 1, type: 'x' }), Buffer.alloc(1024)]))
  await t.rejects(unpack(pax), { name: 'TarFormatError', message: /a pax or long-name header claims 65537 bytes/u })
})

t.test('a file of megabytes read in small pieces comes whole, byte for byte', async (t) => {
  const big = randomBytes(3 * 1024 * 1024 + 17)
  const gz = await pack([{ name: 'small.json', data: Buffer.from('{}') }, { name: 'big.json', data: big }, { name: 'last.json', data: Buffer.from('[]') }])
  for (const chunkSize of [1000, 65_536, gz.length]) {
    const entries = await unpack(gz, chunkSize)
    t.same(entries.map((entry) => entry.name), ['small.json', 'big.json', 'last.json'], `in pieces of ${chunkSize}`)
    t.ok(entries[1]?.data.equals(big), 'the big one whole')
    t.equal(entries[2]?.data.toString(), '[]', 'and the one after it')
  }
})
