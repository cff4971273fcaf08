import { KeyUnavailableError } from '../errors.js'
import { kidRecord, type Keyring } from './keyring.js'

/**
 * What stored copies say of the key under a kid: one opened; some are under it and none opened;
 * none is under it; or some could not be read, and none under it opened.
 */
export type KidProof = 'opened' | 'unopened' | 'none' | 'unknown'

/**
 * The restore's stop for a kid whose key opens none of the copies under it: `count` active ones,
 * or (null) the archived ones of the sealing kid. `what` names them as the store keeps them.
 */
export function wrongKeyError (kid: string, count: number | null, what: 'files' | 'rows'): KeyUnavailableError {
  const which = count === null ? `key '${kid}', which seals every write, opens none of the archived sessions sealed under it` : `key '${kid}' opens none of the ${count} sessions sealed under it`
  return new KeyUnavailableError(kid, `cannot load the sessions: ${which}; TASK_ENCRYPTION_KEYS holds a different key under that kid. Put the right key back; those ${what} were left untouched`)
}

/**
 * The configured kids whose key a check the store kept has proven (those not in `unkept`, what
 * Keyring.verifyChecks returned: the others matched, or it threw). A box under such a kid that
 * does not open is damaged, never a sign of a wrong key.
 */
export function checkedKids (keyring: Keyring, unkept: Readonly<Record<string, string>>): string[] {
  return keyring.kids.filter((kid) => !Object.hasOwn(unkept, kid))
}

export interface SettleOptions {
  keyring: Keyring
  /** Checks of configured kids the store has none for yet (Keyring.verifyChecks). */
  unkept: Readonly<Record<string, string>>
  /** Whether an active copy under the kid opened at this restore. */
  proven: (kid: string) => boolean
  /** What the archived copies say of the kid's key. */
  archivedProof: (kid: string) => Promise<KidProof>
  what: 'files' | 'rows'
}

/**
 * After a restore, both stores: the sealing kid, when no active copy proves its key and the store
 * keeps no check of it, is judged by the archived copies; some under it and none opening stops
 * the restore (new sessions would be sealed under a wrong key). Resolves with the checks worth
 * keeping: of kids an active copy proved, and of the sealing kid when nothing stored refuses its
 * key. A kid that only opens waits for its proof, so a mistyped old key is never kept.
 */
export async function provenKeyChecks ({ keyring, unkept, proven, archivedProof, what }: SettleOptions): Promise<Record<string, string>> {
  const sealing = keyring.activeKid
  let proof: KidProof | null = null
  if (Object.hasOwn(unkept, sealing) && !proven(sealing)) {
    proof = await archivedProof(sealing)
    if (proof === 'unopened') throw wrongKeyError(sealing, null, what)
  }
  const keep = kidRecord<string>()
  for (const [kid, check] of Object.entries(unkept)) {
    if (proven(kid) || (kid === sealing && (proof === 'opened' || proof === 'none'))) keep[kid] = check
  }
  return keep
}
