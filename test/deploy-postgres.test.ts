/**
 * The PostgreSQL mode's deployment files, read as the tools read them (no cluster, no Docker
 * daemon, no database needed): docker-compose.postgres.yml and deploy/kubernetes/postgres/
 * keep the promises users rely on: the database is healthy before taskvault starts and keeps
 * its data on a volume, DATABASE_URL comes from a Secret and never from the manifest, probes
 * on the right paths and port, non-root, a grace period longer than the drain, one server per
 * schema, and settings the service accepts. The README's "Running on PostgreSQL" names every
 * setting and command it is about.
 */
import { readdir } from 'node:fs/promises'
import t from 'tap'
import { parse } from 'yaml'
import { loadConfig } from '../plugins/config.js'
import { ConfigSchema } from '../schemas/config.js'
import { parseDatabaseUrl } from '../services/store/postgres/pool.js'
import { FLUSH_MS, ROOT, documents, manifests as manifestsOf, plainEnv, read, resolvePort, type Doc } from './manifests.js'

const FOLDER = 'deploy/kubernetes/postgres'
const manifests = async (): Promise<Doc[]> => manifestsOf(FOLDER)

/** The YAML files of the folder, by name. */
async function folderFiles (): Promise<string[]> {
  return (await readdir(new URL(`${FOLDER}/`, ROOT))).filter((name) => /\.ya?ml$/u.test(name)).sort()
}

/** Compose's `${VAR:-default}` and `${VAR}`, as with nothing set in the shell or .env. */
function interpolate (text: string): string {
  return text.replace(/\$\{(\w+)(?::?-([^}]*))?\}/gu, (_, _name: string, fallback: string | undefined) => fallback ?? '')
}

/** A compose service's `environment`, a list of NAME=value or a map, interpolated. */
function composeEnv (service: Doc): Record<string, string> {
  const raw = service.environment as string[] | Record<string, string | number | null> | undefined
  const entries: Array<[string, string]> = Array.isArray(raw)
    ? raw.map((item) => { const at = item.indexOf('='); return [item.slice(0, at), item.slice(at + 1)] })
    : Object.entries(raw ?? {}).map(([name, value]) => [name, String(value ?? '')])
  return Object.fromEntries(entries.map(([name, value]) => [name, interpolate(value)]))
}

t.test('every YAML file of the PostgreSQL mode parses', async (t) => {
  for (const path of ['docker-compose.postgres.yml', ...(await folderFiles()).map((name) => `${FOLDER}/${name}`)]) {
    const docs = await documents(path)
    t.ok(docs.length > 0 && docs.every((doc) => doc !== null && typeof doc === 'object'), `${path}: ${docs.length} document(s)`)
  }
})

t.test('the kustomization lists every manifest of the folder, and never the example Secret', async (t) => {
  const kustomization = parse(await read(`${FOLDER}/kustomization.yaml`)) as Doc
  t.equal(kustomization.kind, 'Kustomization')
  const listed = [...(kustomization.resources as string[])].sort()
  const files = (await folderFiles()).filter((name) => name !== 'kustomization.yaml')
  // An example in the list would put its placeholder over the real Secret on every apply.
  const examples = files.filter((name) => name.includes('.example.'))
  t.same(listed, files.filter((name) => !examples.includes(name)), 'every other file is a resource, and only those')
  t.ok(examples.length > 0, 'an example Secret is there to copy from')
  for (const name of examples) t.notOk(listed.includes(name), `${name} is not applied`)
})

t.test('Kubernetes: one server per schema, DATABASE_URL from a Secret, probes, non-root, grace period, no volume', async (t) => {
  const docs = await manifests()
  const workloads = docs.filter((doc) => ['Deployment', 'StatefulSet', 'DaemonSet'].includes(doc.kind))
  t.equal(workloads.length, 1, 'one workload')
  const workload = workloads[0] as Doc
  t.equal(workload.kind, 'Deployment', 'a Deployment: the state lives in the database')
  // Until execution leases (issue 14), a second server on the schema serves stale reads and
  // meets version conflicts; Recreate waits until the old pod is gone before the new one starts.
  t.equal(workload.spec.replicas, 1, 'one replica')
  t.equal(workload.spec.strategy?.type, 'Recreate', 'the old pod is gone before the new one starts')
  t.same(workload.spec.selector.matchLabels, Object.fromEntries(Object.entries(workload.spec.template.metadata.labels).filter(([key]) => key in workload.spec.selector.matchLabels)), 'the selector matches the pod labels')

  const pod = workload.spec.template.spec as Doc
  const container = (pod.containers as Doc[]).find((item) => item.name === 'taskvault') as Doc
  t.ok(container, 'the taskvault container')
  const env = plainEnv(container.env)
  t.equal(env.TASK_STORE, 'postgres')
  const port = Number(env.PORT)
  t.equal(resolvePort('http', container), port, 'the container port is the PORT setting')
  t.equal(env.HOST, '0.0.0.0', 'listens beyond loopback inside the pod')
  const replicaId = (container.env as Doc[]).find((item) => item.name === 'TASK_REPLICA_ID')
  t.equal(replicaId?.valueFrom?.fieldRef?.fieldPath, 'metadata.name', 'each pod is a replica named after itself (downward API)')

  // DATABASE_URL: from a Secret, never a literal anywhere in the manifests' environment.
  const url = (container.env as Doc[]).filter((item) => item.name === 'DATABASE_URL')
  t.equal(url.length, 1, 'DATABASE_URL is set once')
  t.equal(url[0]?.value, undefined, 'no URL in the manifest itself')
  const ref = url[0]?.valueFrom?.secretKeyRef as Doc | undefined
  t.ok(ref?.name && ref.key, 'DATABASE_URL from a secretKeyRef')
  t.notOk(ref?.optional, 'the Secret is required: without it the pod does not start')
  const literals = (container.env as Doc[]).filter((item) => /postgres(ql)?:\/\//iu.test(String(item.value ?? '')))
  t.same(literals.map((item) => item.name), [], 'no postgres:// literal in any setting')
  t.notOk(docs.some((doc) => doc.kind === 'Secret'), 'the kustomization applies no Secret (the real one is yours)')

  // The example names the same Secret and key, with a URL that is obviously a placeholder.
  const example = (await documents(`${FOLDER}/secret.example.yaml`)).find((doc) => doc.kind === 'Secret') as Doc
  t.equal(example?.metadata.name, ref?.name, 'the example Secret is the one the Deployment reads')
  const placeholder = String(example?.stringData?.[ref?.key] ?? '')
  const parsed = parseDatabaseUrl(placeholder)
  t.match(parsed.hostname, /\.invalid$/u, 'its host can never resolve (RFC 2606)')
  t.match(placeholder, /CHANGE-ME/u, 'its password says to change it')

  // Probes.
  t.equal(container.livenessProbe.httpGet.path, '/health')
  t.equal(container.readinessProbe.httpGet.path, '/ready')
  for (const name of ['livenessProbe', 'readinessProbe', 'startupProbe']) {
    t.equal(resolvePort(container[name].httpGet.port, container), port, `${name} on the container's PORT`)
  }

  // Non-root.
  t.equal(pod.securityContext.runAsNonRoot, true)
  t.ok(pod.securityContext.runAsUser > 0, 'a non-root uid')
  t.equal(container.securityContext?.allowPrivilegeEscalation, false)
  t.equal(container.securityContext?.readOnlyRootFilesystem, true)

  // No persistent volume: the pod may start on any node.
  t.notOk(workload.spec.volumeClaimTemplates, 'no volume claim templates')
  t.notOk(docs.some((doc) => doc.kind === 'PersistentVolumeClaim' || doc.kind === 'PersistentVolume'), 'no claim or volume')
  t.ok(((pod.volumes ?? []) as Doc[]).every((volume) => volume.emptyDir !== undefined), 'scratch volumes only')

  // Shutdown: preStop, then the drain, then flushing writes, all inside the grace period.
  const graceMs = Number(env.TASK_SHUTDOWN_GRACE_MS)
  const preStopMs = Number(container.lifecycle?.preStop?.exec?.command?.[1] ?? 0) * 1000
  t.ok(graceMs > 0, 'TASK_SHUTDOWN_GRACE_MS is set in the manifest')
  t.ok(pod.terminationGracePeriodSeconds * 1000 > graceMs, 'terminationGracePeriodSeconds is above TASK_SHUTDOWN_GRACE_MS')
  t.ok(pod.terminationGracePeriodSeconds * 1000 >= preStopMs + graceMs + FLUSH_MS, 'and leaves time for preStop and the flush')

  t.ok(container.resources.requests.cpu && container.resources.requests.memory, 'resource requests')
  t.ok(container.resources.limits.memory, 'a memory limit')
  const keys = (container.env as Doc[]).find((item) => item.name === 'TASK_API_KEYS')
  t.ok(keys === undefined || (keys.value === undefined && keys.valueFrom?.secretKeyRef?.name), 'API keys, if any, from a Secret')

  const services = docs.filter((doc) => doc.kind === 'Service')
  t.ok(services.length > 0, 'a Service')
  for (const service of services) {
    t.same(service.spec.selector, workload.spec.selector.matchLabels, `${service.metadata.name} selects the pod`)
    t.ok((service.spec.ports as Doc[]).every((item) => resolvePort(item.targetPort, container) === port), `${service.metadata.name} targets the container port`)
  }

  await t.resolves(loadConfig({ values: { ...env, DATABASE_URL: placeholder }, readEnvironment: false }), 'every setting in the manifest is one the service accepts')
})

t.test('docker-compose.postgres.yml: a healthy postgres on a volume first, then one taskvault on it', async (t) => {
  const compose = parse(await read('docker-compose.postgres.yml')) as Doc
  const services = compose.services as Record<string, Doc>

  // PostgreSQL: the image, a health check, its data on a named volume, a password from the shell.
  const [dbName, db] = Object.entries(services).find(([, service]) => /^postgres:\d+/u.test(String(service.image))) ?? []
  t.ok(db !== undefined, 'a postgres service')
  if (dbName === undefined || db === undefined) return
  t.equal(db.image, 'postgres:17')
  t.match(JSON.stringify(db.healthcheck?.test), /pg_isready/u, 'health-checked with pg_isready')
  const mount = (db.volumes as string[]).map((item) => item.split(':')).find(([, path]) => path === '/var/lib/postgresql/data')
  t.ok(mount !== undefined && (mount[0] as string) in (compose.volumes ?? {}), 'its data directory is a named volume, declared')
  const rawDb = (db.environment as string[]).find((item) => item.startsWith('POSTGRES_PASSWORD=')) ?? ''
  t.match(rawDb, /^POSTGRES_PASSWORD=\$\{POSTGRES_PASSWORD:-[^}]+\}$/u, 'the password comes from the shell or .env, with a development default')
  const dbEnv = composeEnv(db)

  // taskvault: built here, one of it, started once the database is healthy.
  const built = Object.entries(services).filter(([, service]) => service.build !== undefined)
  t.equal(built.length, 1, 'one taskvault service (several replicas come with execution leases)')
  const [, app] = built[0] as [string, Doc]
  t.notOk((app.deploy?.replicas ?? 1) > 1, 'one replica')
  t.equal(app.depends_on?.[dbName]?.condition, 'service_healthy', 'waits for a healthy database')
  const env = composeEnv(app)
  t.equal(env.TASK_STORE, 'postgres')
  const url = parseDatabaseUrl(env.DATABASE_URL ?? '')
  t.equal(url.hostname, dbName, 'DATABASE_URL names the postgres service')
  t.equal(url.port === '' ? 5432 : Number(url.port), 5432)
  t.equal(decodeURIComponent(url.username), dbEnv.POSTGRES_USER, 'as its user')
  t.equal(decodeURIComponent(url.password), dbEnv.POSTGRES_PASSWORD, 'with its password')
  t.equal(url.pathname.slice(1), dbEnv.POSTGRES_DB, 'on its database')
  t.match(app.environment.find((item: string) => item.startsWith('DATABASE_URL=')), /\$\{POSTGRES_PASSWORD:-/u, 'the same password variable')

  t.ok((app.ports as string[]).some((item) => item.endsWith(':7000')), 'port 7000')
  t.match(JSON.stringify(app.healthcheck?.test), /\/(health|ready)\b/u, 'its own health check on /health or /ready')
  const stopMs = Number(/^(\d+)s$/u.exec(app.stop_grace_period)?.[1]) * 1000
  t.ok(stopMs >= Number(env.TASK_SHUTDOWN_GRACE_MS) + FLUSH_MS, 'stop_grace_period covers the drain and the flush')
  const { TASK_API_KEYS: _keys, ...settings } = env
  await t.resolves(loadConfig({ values: settings, readEnvironment: false }), 'every setting is one the service accepts')
})

t.test('README: Running on PostgreSQL names every database setting and the commands', async (t) => {
  const readme = await read('README.md')
  const start = readme.indexOf('\n## Running on PostgreSQL\n')
  t.ok(start >= 0, 'the section exists (anchor #running-on-postgresql)')
  const end = readme.indexOf('\n## ', start + 1)
  const section = readme.slice(start, end === -1 ? undefined : end)
  t.ok(start > readme.indexOf('\n## Storage and the durability guarantee\n'), 'after Storage and the durability guarantee')
  t.match(readme, /\]\(#running-on-postgresql\)/u, 'linked from elsewhere (the Settings table)')

  const settings = Object.keys(ConfigSchema.properties).filter((name) => name.startsWith('TASK_DB_'))
  t.ok(settings.length >= 4, `the TASK_DB_* settings: ${settings.join(', ')}`)
  for (const name of [...settings, 'TASK_STORE', 'DATABASE_URL']) t.match(section, new RegExp(`\\b${name}\\b`, 'u'), `names ${name}`)
  for (const command of [
    /taskvault migrate --database-url/u,
    /taskvault export --database-url \S+ \S+/u,
    /taskvault import \S+ --database-url/u,
    /--force/u,
    /pg_dump .*--schema=/u,
    /docker-compose\.postgres\.yml/u,
    /deploy\/kubernetes\/postgres/u
  ]) t.match(section, command, `shows ${command.source}`)
})
