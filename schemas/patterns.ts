/**
 * Patterns used outside TypeBox too, in a module that loads nothing: the restore's reader
 * threads check kids with it, and TypeBox is no part of their start.
 */

/** The name of an encryption key (TASK_ENCRYPTION_KEYS), as a sealed document names it. */
export const KID_PATTERN = '^[A-Za-z0-9_-]{1,32}$'
