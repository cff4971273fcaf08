/**
 * Reading the deployment files as the deploy tests check them: YAML documents, the manifests a
 * kustomization applies, and the settings and ports a container declares. Not a *.test.ts file.
 */
import { readFile } from 'node:fs/promises'
import { parse, parseAllDocuments } from 'yaml'
import { SETTING_DEFAULTS } from '../schemas/options.js'

export const ROOT = new URL('../../', import.meta.url)
export const read = (path: string): Promise<string> => readFile(new URL(path, ROOT), 'utf8')
/** server.ts gives writes this long to flush after the grace period. */
export const FLUSH_MS = 10_000

/**
 * How long server.ts may take to stop, as a container's settings `env` set it: the grace for
 * running tasks, then the streams' time for their last events, then the flush.
 */
export function stopMs (env: Record<string, string | undefined>): number {
  return Number(env.TASK_SHUTDOWN_GRACE_MS ?? SETTING_DEFAULTS.TASK_SHUTDOWN_GRACE_MS) + Number(env.TASK_EVENTS_CLOSE_MS ?? SETTING_DEFAULTS.TASK_EVENTS_CLOSE_MS) + FLUSH_MS
}

export type Doc = Record<string, any>

/** Every document of a YAML file; a syntax error fails with the file's name. */
export async function documents (path: string): Promise<Doc[]> {
  return parseAllDocuments(await read(path)).map((doc) => {
    if (doc.errors.length > 0) throw new Error(`${path}: ${doc.errors.map(String).join('; ')}`)
    return doc.toJS() as Doc
  })
}

/** Every manifest the kustomization of `folder` applies. */
export async function manifests (folder: string): Promise<Doc[]> {
  const kustomization = parse(await read(`${folder}/kustomization.yaml`)) as Doc
  const docs: Doc[] = []
  for (const file of kustomization.resources as string[]) docs.push(...await documents(`${folder}/${file}`))
  return docs
}

/** Plain `value` env entries, as the settings the service reads. */
export function plainEnv (env: Array<{ name: string, value?: string }>): Record<string, string> {
  return Object.fromEntries(env.filter((item) => item.value !== undefined).map((item) => [item.name, item.value as string]))
}

/** A probe's or service's port: a number, or the name of a container port. */
export function resolvePort (port: string | number, container: Doc): number {
  if (typeof port === 'number') return port
  const named = (container.ports as Doc[]).find((item) => item.name === port)
  if (named === undefined) throw new Error(`no container port named ${port}`)
  return named.containerPort as number
}
