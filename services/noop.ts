/** Does nothing: for a rejection that is expected and already accounted for, and unneeded callbacks. */
export function noop (): void {}
