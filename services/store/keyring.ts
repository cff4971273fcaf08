import { createCipheriv, createDecipheriv, createHmac, createSecretKey, randomFillSync, type CipherGCM, type KeyObject } from 'node:crypto'
import { CorruptSessionFileError, InvalidEncryptionKeysError, KeyUnavailableError, SealNotOpenedError } from '../errors.js'
import { KID_PATTERN } from '../../schemas/patterns.js'
import { readSettingFile } from '../setting-file.js'

/**
 * Encryption at rest: AES-256-GCM under keys named by id (kid). The first key seals every
 * write; the others only open, so rotation is "new key first, run `taskvault seal`, drop the
 * old one". The associated data binds a sealed document to its format version, session id and
 * times, so a sealed file copied under another session's name does not open.
 */

export const SEAL_VERSION = 1
export const SEAL_ALG = 'A256GCM'
const KID = new RegExp(KID_PATTERN, 'u')
const KEY_BYTES = 32
const IV_BYTES = 12
const TAG_BYTES = 16
/** How much is encrypted between two turns of the event loop. */
const SLICE_BYTES = 1024 * 1024
/** What a key check is the HMAC of (see keyCheck). */
const KEY_CHECK_TEXT = 'taskvault key check 1'
/** IVs drawn from the CSPRNG at once: one call per 256 seals rather than one each (about 4 µs a call). */
const IV_POOL = 256

/** Whether `kid` is a name a key can have. */
export function isKid (kid: unknown): kid is string {
  return typeof kid === 'string' && KID.test(kid)
}

/** What stays in clear in a sealed document, beside the sealed box. */
export interface Clear {
  session_id: string
  created_at: string
  updated_at: string
}

export interface SealedBox {
  v: number
  alg: string
  kid: string
  iv: string
  tag: string
  data: string
}

export interface SealedDocument extends Clear {
  sealed: SealedBox
}

/**
 * A record keyed by kid. A kid is any name the pattern allows, `constructor` and `__proto__`
 * included: the record has no prototype to inherit one from (or to set by one).
 */
export function kidRecord<T> (entries: Iterable<readonly [string, T]> = []): Record<string, T> {
  const record = Object.create(null) as Record<string, T>
  for (const [kid, value] of entries) record[kid] = value
  return record
}

export class Keyring {
  /** The kid every write is sealed under. */
  readonly activeKid: string
  /** Imported once: a cipher made from a KeyObject skips importing the key each time. */
  private readonly keys: ReadonlyMap<string, KeyObject>
  private readonly ivs = Buffer.alloc(IV_BYTES * IV_POOL)
  private ivAt = this.ivs.length

  private constructor (keys: Map<string, Buffer>, activeKid: string) {
    this.keys = new Map([...keys].map(([kid, key]) => [kid, createSecretKey(key)]))
    this.activeKid = activeKid
  }

  /** A fresh random IV. Each is used once: the pool is refilled, never reread. */
  private nextIv (): Buffer {
    if (this.ivAt === this.ivs.length) {
      randomFillSync(this.ivs)
      this.ivAt = 0
    }
    // A copy, so that a refill never changes an IV still referenced.
    const iv = Buffer.from(this.ivs.subarray(this.ivAt, this.ivAt + IV_BYTES))
    this.ivAt += IV_BYTES
    return iv
  }

  /**
   * TASK_ENCRYPTION_KEYS: `kid:base64key,...`, or `@/path` to a file holding the same (commas or
   * newlines between entries). Empty: null, no encryption. Errors name the entry, never a key.
   */
  static parse (value: string, readFile: (path: string) => string = (path) => readSettingFile(path)): Keyring | null {
    let text = value.trim()
    if (text === '') return null
    if (text.startsWith('@')) {
      const path = text.slice(1)
      try {
        text = readFile(path)
      } catch (err) {
        // Named only when it reads as a path: `@k1:<key>` (an `@` typed before the list) must not print the key.
        const named = /^\/[^:,\s]*$/u.test(path) ? path : "named after the '@' (not shown: it is no absolute path, and may hold a key)"
        throw new InvalidEncryptionKeysError(`cannot read the key file ${named} (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`)
      }
    }
    const entries = text.split(/[,\n]/u).map((entry) => entry.trim()).filter((entry) => entry !== '')
    if (entries.length === 0) throw new InvalidEncryptionKeysError('no keys in it')
    const keys = new Map<string, Buffer>()
    entries.forEach((entry, index) => {
      const at = entry.indexOf(':')
      const kid = at === -1 ? '' : entry.slice(0, at)
      const where = `entry ${index + 1}`
      if (!isKid(kid)) throw new InvalidEncryptionKeysError(`${where}: expected kid:base64key with a kid of 1 to 32 letters, digits, _ or -`)
      if (keys.has(kid)) throw new InvalidEncryptionKeysError(`${where}: kid '${kid}' appears twice`)
      const encoded = entry.slice(at + 1).trim()
      const key = Buffer.from(encoded, 'base64')
      // Buffer.from skips what is not base64; a re-encoding that differs means it was not base64.
      if (!/^[A-Za-z0-9+/]+={0,2}$/u.test(encoded) || key.toString('base64').replace(/=+$/u, '') !== encoded.replace(/=+$/u, '')) {
        throw new InvalidEncryptionKeysError(`${where} (kid '${kid}'): the key is not base64`)
      }
      if (key.length !== KEY_BYTES) throw new InvalidEncryptionKeysError(`${where} (kid '${kid}'): the key must be ${KEY_BYTES} bytes, it is ${key.length} (make one with: openssl rand -base64 32)`)
      // A new kid over an old key looks like a rotation and is none: what it seals, the old key opens.
      const twin = [...keys].find(([, other]) => other.equals(key))
      if (twin !== undefined) throw new InvalidEncryptionKeysError(`${where} (kid '${kid}'): the same key as kid '${twin[0]}'; a new kid needs a new key (make one with: openssl rand -base64 32)`)
      keys.set(kid, key)
    })
    return new Keyring(keys, [...keys.keys()][0] as string)
  }

  /** The keys as [kid, key] pairs, active first: for reader threads, which open sealed files at restore. */
  entries (): Array<[string, Uint8Array]> {
    return [...this.keys].map(([kid, key]) => [kid, key.export()])
  }

  /** The keyring `entries()` came from, rebuilt (in a reader thread). */
  static fromEntries (entries: Array<[string, Uint8Array]>): Keyring {
    return new Keyring(new Map(entries.map(([kid, key]) => [kid, Buffer.from(key)])), entries[0]?.[0] as string)
  }

  get kids (): string[] {
    return [...this.keys.keys()]
  }

  /**
   * What the store keeps per kid, to know a key given later under that kid for the same one:
   * an HMAC of a fixed text under the key, which tells keys apart and says nothing of them.
   */
  keyCheck (kid: string): string {
    const key = this.keys.get(kid)
    if (key === undefined) throw new KeyUnavailableError(kid)
    return createHmac('sha256', key).update(KEY_CHECK_TEXT).digest('base64')
  }

  /**
   * Compares the configured keys with the checks a store kept (kid → keyCheck): throws
   * KeyUnavailableError for a kid whose key is another than the one first used under it.
   * Returns the checks to add, of kids the store has none for.
   */
  verifyChecks (stored: Readonly<Record<string, string>>, where: string): Record<string, string> {
    const added = kidRecord<string>()
    for (const kid of this.kids) {
      const check = this.keyCheck(kid)
      const kept = Object.hasOwn(stored, kid) ? stored[kid] : undefined
      if (kept === undefined) added[kid] = check
      else if (kept !== check) {
        throw new KeyUnavailableError(kid, `key '${kid}' is not the key ${where} was first given under that kid (its key check differs): ` +
          'TASK_ENCRYPTION_KEYS holds a different key under that kid, which would seal what the right key never opens. Put the right key back, or use a new kid for a new key; nothing was changed')
      }
    }
    return added
  }

  /**
   * Seals `plaintext` (given in slices) under the active key: the sealed document as the bytes of
   * `JSON.stringify(document, null, indent) + '\n'`, made in slices (a large session's base64 is
   * tens of megabytes), with the event loop turning between them.
   */
  async sealToBytes (clear: Clear, plaintext: readonly Buffer[], indent: number): Promise<Buffer> {
    // The common case, a small session: one pass, no turn of the event loop.
    if (plaintext.length === 1 && (plaintext[0] as Buffer).length < SLICE_BYTES) {
      const { head, ciphertext } = this.encryptOne(clear, plaintext[0] as Buffer)
      const [before, after] = layout(clear, head, indent)
      // base64 needs no JSON escaping: it goes between the quotes as it is.
      return Buffer.from(before + '"' + ciphertext.toString('base64') + '"' + after + '\n', 'utf8')
    }
    const box = await this.encrypt(clear, plaintext)
    const [before, after] = layout(clear, box.head, indent)
    const ciphertext = Buffer.concat(box.ciphertext)
    const pieces: Buffer[] = [Buffer.from(before + '"', 'utf8')]
    // Base64 slices start on 3-byte boundaries, so they join into the one encoding.
    const step = Math.floor(SLICE_BYTES / 3) * 3
    for (let at = 0; at < ciphertext.length; at += step) {
      pieces.push(Buffer.from(ciphertext.subarray(at, at + step).toString('base64'), 'latin1'))
      if (at + step < ciphertext.length) await new Promise((resolve) => setImmediate(resolve))
    }
    pieces.push(Buffer.from('"' + after + '\n', 'utf8'))
    return Buffer.concat(pieces)
  }

  private encryptOne (clear: Clear, plaintext: Buffer): { head: Omit<SealedBox, 'data'>, ciphertext: Buffer } {
    const { cipher, iv } = this.cipher(clear)
    const body = cipher.update(plaintext)
    // GCM is a stream mode: final() only makes the tag.
    const tail = cipher.final()
    return { head: this.head(iv, cipher.getAuthTag()), ciphertext: tail.length === 0 ? body : Buffer.concat([body, tail]) }
  }

  private cipher (clear: Clear): { cipher: CipherGCM, iv: Buffer } {
    const iv = this.nextIv()
    const cipher = createCipheriv('aes-256-gcm', this.keys.get(this.activeKid) as KeyObject, iv, { authTagLength: TAG_BYTES })
    cipher.setAAD(associatedData(clear))
    return { cipher, iv }
  }

  private head (iv: Buffer, tag: Buffer): Omit<SealedBox, 'data'> {
    return { v: SEAL_VERSION, alg: SEAL_ALG, kid: this.activeKid, iv: iv.toString('base64'), tag: tag.toString('base64') }
  }

  private async encrypt (clear: Clear, plaintext: readonly Buffer[]): Promise<{ head: Omit<SealedBox, 'data'>, ciphertext: Buffer[] }> {
    const { cipher, iv } = this.cipher(clear)
    const ciphertext: Buffer[] = []
    let sinceYield = 0
    for (const piece of plaintext) {
      ciphertext.push(cipher.update(piece))
      sinceYield += piece.length
      if (sinceYield >= SLICE_BYTES) {
        sinceYield = 0
        await new Promise((resolve) => setImmediate(resolve))
      }
    }
    ciphertext.push(cipher.final())
    return { head: this.head(iv, cipher.getAuthTag()), ciphertext }
  }

  /**
   * Opens a sealed document found in `name`. A kid that is not configured throws
   * KeyUnavailableError (the file must be left alone); a box that does not verify is corrupt.
   */
  open (name: string, document: SealedDocument): Buffer {
    return this.openBytes(name, document, document.sealed, Buffer.from(document.sealed.data, 'base64'))
  }

  /** `open` for a box whose data the caller has decoded: a reader thread decodes it straight from the file's bytes. */
  openBytes (name: string, clear: Clear, box: Omit<SealedBox, 'data'>, ciphertext: Buffer): Buffer {
    if (box.v !== SEAL_VERSION || box.alg !== SEAL_ALG) throw new CorruptSessionFileError(name, `sealed with an unknown format (v ${String(box.v)}, ${String(box.alg)})`)
    const key = this.keys.get(box.kid)
    if (key === undefined) throw new KeyUnavailableError(box.kid)
    const iv = Buffer.from(box.iv, 'base64')
    const tag = Buffer.from(box.tag, 'base64')
    if (iv.length !== IV_BYTES || tag.length !== TAG_BYTES) throw new SealNotOpenedError(name, box.kid, 'authentication failed (malformed iv or tag)')
    try {
      const decipher = createDecipheriv('aes-256-gcm', key, iv, { authTagLength: TAG_BYTES })
      decipher.setAAD(associatedData(clear))
      decipher.setAuthTag(tag)
      const body = decipher.update(ciphertext)
      const tail = decipher.final()
      return tail.length === 0 ? body : Buffer.concat([body, tail])
    } catch {
      throw new SealNotOpenedError(name, box.kid)
    }
  }
}

/**
 * The sealed document's text before and after the data string: what `JSON.stringify(document,
 * null, indent)` writes there, put together directly (a few µs a save less).
 */
function layout (clear: Clear, head: Omit<SealedBox, 'data'>, indent: number): [string, string] {
  const q = JSON.stringify
  const one = ' '.repeat(indent)
  const nl = indent > 0 ? '\n' : ''
  const colon = indent > 0 ? ': ' : ':'
  const at = (depth: string, key: string): string => `${nl}${depth}"${key}"${colon}`
  const two = one + one
  const before = `{${at(one, 'session_id')}${q(clear.session_id)},${at(one, 'created_at')}${q(clear.created_at)},${at(one, 'updated_at')}${q(clear.updated_at)},` +
    `${at(one, 'sealed')}{${at(two, 'v')}${q(head.v)},${at(two, 'alg')}${q(head.alg)},${at(two, 'kid')}${q(head.kid)},` +
    `${at(two, 'iv')}${q(head.iv)},${at(two, 'tag')}${q(head.tag)},${at(two, 'data')}`
  return [before, `${nl}${one}}${nl}}`]
}

function associatedData (clear: Clear): Buffer {
  return Buffer.from(JSON.stringify(['taskvault-sealed', SEAL_VERSION, clear.session_id, clear.created_at, clear.updated_at]), 'utf8')
}
