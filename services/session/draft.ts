import { SessionNotFoundError } from '../errors.js'
import { cloneSessionFile, type SessionFile } from './session.js'

/**
 * What a write does with a session. `save` writes the draft's file (`force`: even with auto-save
 * off, as the shutdown flush does); `unarchive` writes it and then removes the archived file it
 * came from (`archived`: that file's content, archived again if the write's outcome is unknown);
 * `archive` moves the stored file to the archive; `delete` removes the stored file and, with
 * `archived`, the session's archived files.
 */
export type Intent =
  | { kind: 'save', force: boolean }
  | { kind: 'unarchive', from: string, bytes: number, archived: Readonly<SessionFile> }
  | { kind: 'archive' }
  | { kind: 'delete', archived: boolean, upTo?: string }

const SAVE: Intent = { kind: 'save', force: false }

/**
 * The working copy a change edits, and what its write will do. Edits to `file` are saved; the
 * other intents are set through their methods, so a file never disappears without saying how.
 */
export class Draft {
  #file: SessionFile | null
  #intent: Intent = SAVE

  /**
   * `before`: the session as the batch found it, before any change of the batch (not to be
   * edited). What only `file` holds is not durable until the batch's write is.
   */
  constructor (readonly sessionId: string, file: SessionFile | null, readonly now: Date, readonly before: Readonly<SessionFile> | null = null) {
    this.#file = file
  }

  get file (): SessionFile | null {
    return this.#file
  }

  /** Replaces the content (a new session); it is saved. */
  set file (file: SessionFile) {
    this.#file = file
  }

  get intent (): Intent {
    return this.#intent
  }

  /** Saves even with auto-save off (the shutdown flush). */
  forceSave (): void {
    if (this.#intent.kind === 'save') this.#intent = { kind: 'save', force: true }
  }

  /**
   * Makes `file`, read from the archived file `from`, the active session again. The draft edits
   * a copy: a change applied again (its batch too large together, or a version conflict) must
   * start from the archived content, not from what the failed batch made of it.
   */
  unarchive (file: SessionFile, from: string, bytes: number): void {
    this.#file = cloneSessionFile(file)
    this.#intent = { kind: 'unarchive', from, bytes, archived: file }
  }

  /** Moves the stored session to the archive. */
  archive (): void {
    this.#file = null
    this.#intent = { kind: 'archive' }
  }

  /**
   * Removes the stored session and, with `archived`, its archived files; with `upTo` (an
   * archived copy's name) only while no newer copy exists (retention judged that one).
   */
  delete (options: { archived: boolean, upTo?: string }): void {
    this.#file = null
    this.#intent = { kind: 'delete', archived: options.archived, ...(options.upTo !== undefined && { upTo: options.upTo }) }
  }
}

/** The draft's session, or SessionNotFoundError when it does not exist (or is being deleted). */
export function liveFile (draft: Draft): SessionFile {
  if (draft.file === null) throw new SessionNotFoundError(draft.sessionId)
  return draft.file
}

/** What a change returns when it decided to change nothing: it then costs no write. */
export class Unchanged<R> {
  constructor (readonly value: R) {}
}
export const unchanged = <R>(value: R): Unchanged<R> => new Unchanged(value)

/**
 * A change to one session. `apply` edits the draft and returns the change's result; it must
 * throw before editing anything if the change cannot be made (so other changes in the same
 * write are unaffected).
 */
export type ChangeFn<R> = (draft: Draft) => R | Unchanged<R>
