import { createCipheriv, createDecipheriv, randomBytes } from 'node:crypto'
import { readFileSync } from 'node:fs'
import { CorruptSessionFileError, InvalidEncryptionKeysError, KeyUnavailableError } from '../errors.js'

/**
 * Encryption at rest: AES-256-GCM under keys named by id (kid). The first key seals every
 * write; the others only open, so rotation is "new key first, run `taskvault seal`, drop the
 * old one". The associated data binds a sealed document to its format version, session id and
 * times, so a sealed file copied under another session's name does not open.
 */

export const SEAL_VERSION = 1
export const SEAL_ALG = 'A256GCM'
const KID = /^[A-Za-z0-9_-]{1,32}$/u
const KEY_BYTES = 32
const IV_BYTES = 12
const TAG_BYTES = 16
/** How much is encrypted between two turns of the event loop. */
const SLICE_BYTES = 1024 * 1024

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

export class Keyring {
  /** The kid every write is sealed under. */
  readonly activeKid: string
  private readonly keys: ReadonlyMap<string, Buffer>

  private constructor (keys: Map<string, Buffer>, activeKid: string) {
    this.keys = keys
    this.activeKid = activeKid
  }

  /**
   * TASK_ENCRYPTION_KEYS: `kid:base64key,...`, or `@/path` to a file holding the same (commas or
   * newlines between entries). Empty: null, no encryption. Errors name the entry, never a key.
   */
  static parse (value: string, readFile: (path: string) => string = (path) => readFileSync(path, 'utf8')): Keyring | null {
    let text = value.trim()
    if (text === '') return null
    if (text.startsWith('@')) {
      const path = text.slice(1)
      try {
        text = readFile(path)
      } catch (err) {
        throw new InvalidEncryptionKeysError(`cannot read the key file ${path} (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`)
      }
    }
    const entries = text.split(/[,\n]/u).map((entry) => entry.trim()).filter((entry) => entry !== '')
    if (entries.length === 0) throw new InvalidEncryptionKeysError('no keys in it')
    const keys = new Map<string, Buffer>()
    entries.forEach((entry, index) => {
      const at = entry.indexOf(':')
      const kid = at === -1 ? '' : entry.slice(0, at)
      const where = `entry ${index + 1}`
      if (!KID.test(kid)) throw new InvalidEncryptionKeysError(`${where}: expected kid:base64key with a kid of 1 to 32 letters, digits, _ or -`)
      if (keys.has(kid)) throw new InvalidEncryptionKeysError(`${where}: kid '${kid}' appears twice`)
      const encoded = entry.slice(at + 1).trim()
      const key = Buffer.from(encoded, 'base64')
      // Buffer.from skips what is not base64; a re-encoding that differs means it was not base64.
      if (!/^[A-Za-z0-9+/]+={0,2}$/u.test(encoded) || key.toString('base64').replace(/=+$/u, '') !== encoded.replace(/=+$/u, '')) {
        throw new InvalidEncryptionKeysError(`${where} (kid '${kid}'): the key is not base64`)
      }
      if (key.length !== KEY_BYTES) throw new InvalidEncryptionKeysError(`${where} (kid '${kid}'): the key must be ${KEY_BYTES} bytes, it is ${key.length} (make one with: openssl rand -base64 32)`)
      keys.set(kid, key)
    })
    return new Keyring(keys, [...keys.keys()][0] as string)
  }

  /** The keys as [kid, key] pairs, active first: for reader threads, which open sealed files at restore. */
  entries (): Array<[string, Uint8Array]> {
    return [...this.keys]
  }

  /** The keyring `entries()` came from, rebuilt (in a reader thread). */
  static fromEntries (entries: Array<[string, Uint8Array]>): Keyring {
    return new Keyring(new Map(entries.map(([kid, key]) => [kid, Buffer.from(key)])), entries[0]?.[0] as string)
  }

  get kids (): string[] {
    return [...this.keys.keys()]
  }

  /**
   * Seals `plaintext` (given in slices) under the active key: the sealed document as the bytes of
   * `JSON.stringify(document, null, indent) + '\n'`, made in slices (a large session's base64 is
   * tens of megabytes), with the event loop turning between them.
   */
  async sealToBytes (clear: Clear, plaintext: readonly Buffer[], indent: number): Promise<Buffer> {
    const box = await this.encrypt(clear, plaintext)
    // The layout around the data, from JSON itself; a NUL never occurs in it otherwise.
    const [before, after] = JSON.stringify({ ...clear, sealed: { ...box.head, data: '\u0000' } }, null, indent).split('"\\u0000"') as [string, string]
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

  private async encrypt (clear: Clear, plaintext: readonly Buffer[]): Promise<{ head: Omit<SealedBox, 'data'>, ciphertext: Buffer[] }> {
    const iv = randomBytes(IV_BYTES)
    const cipher = createCipheriv('aes-256-gcm', this.keys.get(this.activeKid) as Buffer, iv, { authTagLength: TAG_BYTES })
    cipher.setAAD(associatedData(clear))
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
    return { head: { v: SEAL_VERSION, alg: SEAL_ALG, kid: this.activeKid, iv: iv.toString('base64'), tag: cipher.getAuthTag().toString('base64') }, ciphertext }
  }

  /**
   * Opens a sealed document found in `name`. A kid that is not configured throws
   * KeyUnavailableError (the file must be left alone); a box that does not verify is corrupt.
   */
  open (name: string, document: SealedDocument): Buffer {
    const box = document.sealed
    if (box.v !== SEAL_VERSION || box.alg !== SEAL_ALG) throw new CorruptSessionFileError(name, `sealed with an unknown format (v ${String(box.v)}, ${String(box.alg)})`)
    const key = this.keys.get(box.kid)
    if (key === undefined) throw new KeyUnavailableError(box.kid)
    const iv = Buffer.from(box.iv, 'base64')
    const tag = Buffer.from(box.tag, 'base64')
    if (iv.length !== IV_BYTES || tag.length !== TAG_BYTES) throw new CorruptSessionFileError(name, 'authentication failed (malformed iv or tag)')
    try {
      const decipher = createDecipheriv('aes-256-gcm', key, iv, { authTagLength: TAG_BYTES })
      decipher.setAAD(associatedData(document))
      decipher.setAuthTag(tag)
      return Buffer.concat([decipher.update(Buffer.from(box.data, 'base64')), decipher.final()])
    } catch {
      throw new CorruptSessionFileError(name, 'authentication failed')
    }
  }
}

function associatedData (clear: Clear): Buffer {
  return Buffer.from(JSON.stringify(['taskvault-sealed', SEAL_VERSION, clear.session_id, clear.created_at, clear.updated_at]), 'utf8')
}
