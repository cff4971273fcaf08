/**
 * The PostgreSQL mode's deployment files, read as the tools read them (no cluster, no Docker
 * daemon, no database needed): docker-compose.postgres.yml and deploy/kubernetes/postgres/
 * keep the promises users rely on: the database is healthy before taskvault starts and keeps
 * its data on a volume, DATABASE_URL comes from a Secret and never from the manifest, probes
 * on the right paths and port, non-root, a grace period longer than the drain, several
 * replicas on one schema (each its own TASK_REPLICA_ID, rolled one at a time, evicted one at a
 * time, behind a round-robin balancer that passes the event stream unbuffered), and settings
 * the service accepts. The README's "Running on PostgreSQL" names every setting and command it
 * is about, and says what several replicas guarantee and what they do not.
 */
import { readdir } from 'node:fs/promises'
import t, { type Test } from 'tap'
import { parse } from 'yaml'
import { loadConfig } from '../plugins/config.js'
import { ConfigSchema } from '../schemas/config.js'
import { parseDatabaseUrl } from '../services/store/postgres/database-url.js'
import { stopMs, ROOT, documents, manifests as manifestsOf, plainEnv, read, resolvePort, type Doc } from './manifests.js'

const FOLDER = 'deploy/kubernetes/postgres'
const manifests = async (): Promise<Doc[]> => manifestsOf(FOLDER)

/** The YAML files of the folder, by name. */
async function folderFiles (): Promise<string[]> {
  return (await readdir(new URL(`${FOLDER}/`, ROOT))).filter((name) => /\.ya?ml$/u.test(name)).sort()
}

/** Every TASK_* name set is a setting of the schema (loadConfig ignores names it does not know). */
function knownSettings (t: Test, names: string[], where: string): void {
  for (const name of names.filter((item) => item.startsWith('TASK_'))) {
    t.ok(name in ConfigSchema.properties, `${where}: ${name} is a setting`)
  }
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

/** One nginx directive: its name, arguments, and the directives of its block if it has one. */
interface Directive { name: string, args: string[], block?: Directive[] }

/** nginx's configuration syntax, enough for these files: directives, blocks, quotes, comments. */
function parseNginx (text: string): Directive[] {
  const tokens = [...text.replace(/#[^\n]*/gu, '').matchAll(/"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|[{};]|[^\s{};]+/gu)].map((match) => match[0])
  let at = 0
  const block = (nested: boolean): Directive[] => {
    const list: Directive[] = []
    while (at < tokens.length) {
      const first = tokens[at++] as string
      if (first === '}') {
        if (!nested) throw new Error('nginx: an unmatched }')
        return list
      }
      const words = [first]
      while (at < tokens.length && !['{', ';', '}'].includes(tokens[at] as string)) words.push(tokens[at++] as string)
      const end = tokens[at++]
      const [name, ...args] = words.map((word) => /^["']/u.test(word) ? word.slice(1, -1) : word) as [string, ...string[]]
      if (end === ';') list.push({ name, args })
      else if (end === '{') list.push({ name, args, block: block(true) })
      else throw new Error(`nginx: ${name} ends with ${end ?? 'the file'}, not ; or {`)
    }
    if (nested) throw new Error('nginx: a block is not closed')
    return list
  }
  return block(false)
}

/** The directives named `name` in a list of directives. */
const named = (list: Directive[] | undefined, name: string): Directive[] => (list ?? []).filter((item) => item.name === name)

/** An nginx time ("90", "90s", "5m", "1h") in milliseconds. */
function nginxMs (value: string | undefined): number {
  const match = /^(\d+)(ms|s|m|h|d)?$/u.exec(value ?? '')
  if (match === null) return Number.NaN
  const unit = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 }[(match[2] ?? 's') as 'ms' | 's' | 'm' | 'h' | 'd']
  return Number(match[1]) * unit
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

t.test('Kubernetes: three replicas rolled one at a time, DATABASE_URL from a Secret, probes, non-root, grace period, no volume', async (t) => {
  const docs = await manifests()
  const workloads = docs.filter((doc) => ['Deployment', 'StatefulSet', 'DaemonSet'].includes(doc.kind))
  t.equal(workloads.length, 1, 'one workload')
  const workload = workloads[0] as Doc
  t.equal(workload.kind, 'Deployment', 'a Deployment: the state lives in the database')
  // Several replicas share the schema (issue 14): a rollout starts a new pod and waits until it
  // is ready before stopping an old one, so the Service always has every replica's worth ready.
  t.equal(workload.spec.replicas, 3, 'three replicas')
  t.equal(workload.spec.strategy?.type, 'RollingUpdate', 'rolled, not recreated')
  t.equal(workload.spec.strategy?.rollingUpdate?.maxUnavailable, 0, 'no pod stops before its successor is ready')
  t.equal(workload.spec.strategy?.rollingUpdate?.maxSurge, 1, 'one new pod at a time')
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
  t.equal(replicaId?.value, undefined, 'no fixed replica id, which every pod would share')
  t.equal(replicaId?.valueFrom?.fieldRef?.fieldPath, 'metadata.name', 'each pod is a replica named after itself (downward API)')
  t.equal(env.TASK_LEASE_MS, '30000', 'leases of 30 s')
  t.equal(env.TASK_SWEEP_INTERVAL_MS, '5000', 'expired leases looked for every 5 s')
  knownSettings(t, (container.env as Doc[]).map((item) => item.name as string), 'deployment.yaml')

  // Spread over nodes when possible (preferred): one node lost stops one replica, not all.
  const spread = ((pod.topologySpreadConstraints ?? []) as Doc[]).find((item) => item.topologyKey === 'kubernetes.io/hostname')
  const preferredAntiAffinity = ((pod.affinity?.podAntiAffinity?.preferredDuringSchedulingIgnoredDuringExecution ?? []) as Doc[])
    .find((item) => item.podAffinityTerm?.topologyKey === 'kubernetes.io/hostname')
  const spreadSelector = (spread?.labelSelector ?? preferredAntiAffinity?.podAffinityTerm?.labelSelector)?.matchLabels as Record<string, string> | undefined
  t.ok(spreadSelector !== undefined, 'replicas spread by hostname (topologySpreadConstraints or pod anti-affinity)')
  t.ok(spread === undefined || spread.whenUnsatisfiable === 'ScheduleAnyway', 'preferred: a cluster of one node still runs every replica')
  t.ok(Object.entries(spreadSelector ?? { none: '' }).every(([key, value]) => workload.spec.template.metadata.labels[key] === value), 'counting the pods of this Deployment')

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

  // Probes. /ready answers 503 while the database is unreachable: such a pod leaves the Service.
  t.equal(container.livenessProbe.httpGet.path, '/health')
  t.equal(container.readinessProbe.httpGet.path, '/ready')
  t.notOk(container.livenessProbe.httpGet.path === '/ready', 'a database outage restarts no pod')
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
  t.ok(pod.terminationGracePeriodSeconds * 1000 >= preStopMs + stopMs(env), 'and leaves time for preStop, the streams\' last events and the flush')

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

t.test('Kubernetes: a PodDisruptionBudget lets evictions stop one replica at a time', async (t) => {
  const docs = await manifests()
  const workload = docs.find((doc) => doc.kind === 'Deployment') as Doc
  const budgets = docs.filter((doc) => doc.kind === 'PodDisruptionBudget')
  t.equal(budgets.length, 1, 'one PodDisruptionBudget')
  const pdb = budgets[0] as Doc
  t.equal(pdb.apiVersion, 'policy/v1')
  t.same(pdb.spec.selector?.matchLabels, workload.spec.selector.matchLabels, 'it selects the Deployment\'s pods, by the same labels')
  const labels = workload.spec.template.metadata.labels as Record<string, string>
  t.ok(Object.entries(pdb.spec.selector.matchLabels as Record<string, string>).every(([key, value]) => labels[key] === value), 'which the pod template carries')
  const bounds = ['minAvailable', 'maxUnavailable'].filter((key) => pdb.spec[key] !== undefined)
  t.equal(bounds.length, 1, 'one bound: minAvailable or maxUnavailable')
  const replicas = workload.spec.replicas as number
  const evictable = pdb.spec.maxUnavailable !== undefined ? Number(pdb.spec.maxUnavailable) : replicas - Number(pdb.spec.minAvailable)
  t.equal(evictable, 1, 'a drain may evict exactly one pod at a time')
  t.ok(replicas - evictable >= 2, 'two replicas keep serving meanwhile')
})

t.test('docker-compose.postgres.yml: a healthy postgres on a volume first, then two taskvault replicas on it behind nginx', async (t) => {
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

  // taskvault: two replicas of the image built here, each started once the database is healthy.
  const replicas = Object.entries(services).filter(([, service]) => /^taskvault:/u.test(String(service.image)))
  t.same(replicas.map(([name]) => name), ['taskvault-1', 'taskvault-2'], 'two taskvault services, taskvault-1 and taskvault-2')
  const ids: string[] = []
  let first: { env: Record<string, string>, rest: string } | undefined
  for (const [name, app] of replicas) {
    t.ok(app.build !== undefined, `${name}: built from this folder`)
    t.notOk((app.deploy?.replicas ?? 1) > 1, `${name}: one container (each replica has its own id)`)
    t.equal(app.depends_on?.[dbName]?.condition, 'service_healthy', `${name}: waits for a healthy database`)
    t.notOk(app.ports, `${name}: not published; reached through the balancer`)
    const env = composeEnv(app)
    t.equal(env.TASK_STORE, 'postgres', `${name}: TASK_STORE=postgres`)
    const url = parseDatabaseUrl(env.DATABASE_URL ?? '')
    t.equal(url.hostname, dbName, `${name}: DATABASE_URL names the postgres service`)
    t.equal(url.port === '' ? 5432 : Number(url.port), 5432)
    t.equal(decodeURIComponent(url.username), dbEnv.POSTGRES_USER, 'as its user')
    t.equal(decodeURIComponent(url.password), dbEnv.POSTGRES_PASSWORD, 'with its password')
    t.equal(url.pathname.slice(1), dbEnv.POSTGRES_DB, 'on its database')
    t.match(app.environment.find((item: string) => item.startsWith('DATABASE_URL=')), /\$\{POSTGRES_PASSWORD:-/u, 'the same password variable')
    t.ok(env.TASK_REPLICA_ID, `${name}: its own TASK_REPLICA_ID`)
    ids.push(env.TASK_REPLICA_ID ?? '')
    t.match(JSON.stringify(app.healthcheck?.test), /\/(health|ready)\b/u, `${name}: its own health check on /health or /ready`)
    const stopGraceMs = Number(/^(\d+)s$/u.exec(app.stop_grace_period)?.[1]) * 1000
    t.ok(stopGraceMs >= stopMs(env), `${name}: stop_grace_period covers the drain, the streams' last events and the flush`)
    knownSettings(t, Object.keys(env), name)
    const { TASK_API_KEYS: _keys, ...settings } = env
    await t.resolves(loadConfig({ values: settings, readEnvironment: false }), `${name}: every setting is one the service accepts`)

    // Alike but for the replica id: the same database, schema, lease and sweep, image and checks.
    const { TASK_REPLICA_ID: _id, ...shared } = env
    const rest = JSON.stringify({ ...app, environment: undefined, depends_on: Object.keys(app.depends_on ?? {}) })
    if (first === undefined) first = { env: shared, rest }
    else {
      t.same(shared, first.env, `${name}: the same settings as ${replicas[0]?.[0]} (DATABASE_URL, TASK_DB_SCHEMA, TASK_LEASE_MS, ...)`)
      t.equal(rest, first.rest, `${name}: the same image, health check and grace period`)
    }
  }
  t.equal(new Set(ids).size, ids.length, `distinct replica ids: ${ids.join(', ')}`)
  t.ok(first?.env.TASK_DB_SCHEMA, 'TASK_DB_SCHEMA named, the same on each')

  // nginx: the only published port, its configuration mounted from deploy/compose/.
  const [balancerName, balancer] = Object.entries(services).find(([, service]) => /^nginx:/u.test(String(service.image))) ?? []
  t.ok(balancer !== undefined, 'an nginx service')
  if (balancerName === undefined || balancer === undefined) return
  t.match(balancer.image, /^nginx:1\.(2[7-9]|[3-9]\d)(\.\d+)?-alpine$/u, 'a maintained nginx, 1.27.3 or later for `resolve` in upstreams')
  const published = Object.entries(services).filter(([, service]) => service.ports !== undefined).map(([name]) => name)
  t.same(published, [balancerName], 'only the balancer is published')
  const port = (balancer.ports as string[]).map((item) => /^127\.0\.0\.1:7000:(\d+)$/u.exec(item)).find((match) => match !== null)
  t.ok(port, 'on 127.0.0.1:7000, loopback only')
  const dependsOn = Array.isArray(balancer.depends_on) ? balancer.depends_on as string[] : Object.keys(balancer.depends_on ?? {})
  t.same([...dependsOn].sort(), replicas.map(([name]) => name), 'started after both replicas')
  const confMount = (balancer.volumes as string[]).map((item) => item.split(':')).find(([, target]) => target === '/etc/nginx/conf.d/default.conf')
  t.ok(confMount, 'its configuration replaces conf.d/default.conf (inside the http block)')
  t.equal(confMount?.[2], 'ro', 'read-only')
  t.equal(confMount?.[0], './deploy/compose/nginx.conf', 'from deploy/compose/nginx.conf')

  // The configuration: round robin over both replicas, the event stream unbuffered.
  const conf = parseNginx(await read('deploy/compose/nginx.conf'))
  const upstreams = named(conf, 'upstream')
  t.equal(upstreams.length, 1, 'one upstream')
  const upstream = upstreams[0] as Directive
  const servers = named(upstream.block, 'server').map((item) => item.args[0])
  t.same(servers, replicas.map(([name]) => `${name}:7000`), 'it lists both replicas, on the port they listen on')
  const balancing = (upstream.block ?? []).filter((item) => ['ip_hash', 'hash', 'sticky', 'least_conn', 'least_time', 'random', 'ntlm'].includes(item.name))
  t.same(balancing.map((item) => item.name), [], 'plain round robin: no ip_hash, hash or sticky')
  t.notOk(named(upstream.block, 'server').some((item) => item.args.some((arg) => /^(weight|backup|down)\b/u.test(arg))), 'every replica alike: no weight, backup or down')
  const resolving = named(upstream.block, 'server').some((item) => item.args.includes('resolve'))
  t.ok(!resolving || (named(upstream.block, 'zone').length === 1 && named(conf, 'resolver').length + named(upstream.block, 'resolver').length > 0), '`resolve` comes with a zone and a resolver')

  const serverBlocks = named(conf, 'server')
  t.equal(serverBlocks.length, 1, 'one server block')
  const server = serverBlocks[0] as Directive
  t.same(named(server.block, 'listen').map((item) => item.args[0]), [port?.[1]], 'it listens on the published container port')
  const locations = named(server.block, 'location')
  const passes = (location: Directive): string[] => named(location.block, 'proxy_pass').map((item) => item.args[0] as string)
  t.ok(locations.length > 0 && locations.every((location) => passes(location).every((target) => target === `http://${upstream.args[0]}`) && passes(location).length === 1), 'every location passes to the upstream')
  const root = locations.find((location) => location.args.length === 1 && location.args[0] === '/')
  t.ok(root, 'everything else goes to the upstream too (location /)')

  // /api/v1/tasks/events: the longest matching prefix location is the one nginx uses.
  const eventsPath = '/api/v1/tasks/events'
  const stream = locations
    .filter((location) => location.args.length === 1 && eventsPath.startsWith(location.args[0] as string))
    .sort((a, b) => (b.args[0] as string).length - (a.args[0] as string).length)[0]
  t.not(stream?.args[0], '/', `a location of its own for ${eventsPath}`)
  const setting = (name: string): string | undefined => named(stream?.block, name)[0]?.args[0] ?? named(server.block, name)[0]?.args[0] ?? named(conf, name)[0]?.args[0]
  t.equal(setting('proxy_buffering'), 'off', 'proxy_buffering off: each event reaches the client as it is sent')
  const heartbeatMs = Number((ConfigSchema.properties.TASK_EVENTS_HEARTBEAT_MS as { default: number }).default)
  t.ok(nginxMs(setting('proxy_read_timeout')) >= 10 * heartbeatMs, `a long read timeout (${setting('proxy_read_timeout')}), far above the ${heartbeatMs} ms heartbeat`)
  t.equal(setting('proxy_http_version'), '1.1', 'HTTP/1.1 to the replicas (keep-alive, streaming)')
  t.equal(named(server.block, 'proxy_set_header').find((item) => item.args[0] === 'Connection')?.args[1] ?? '', '', 'no Connection: close passed on')
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

t.test('README: Running several replicas says how, what is guaranteed and what is not, and the settings', async (t) => {
  const readme = await read('README.md')
  const start = readme.indexOf('\n## Running on PostgreSQL\n')
  const end = readme.indexOf('\n## ', start + 1)
  const section = readme.slice(start, end === -1 ? undefined : end)
  const at = section.indexOf('\n### Running several replicas\n')
  t.ok(at >= 0, 'a subsection of Running on PostgreSQL (anchor #running-several-replicas)')
  t.ok(at < section.indexOf('\n### What differs from the file store\n'), 'before What differs from the file store')
  const next = section.indexOf('\n### ', at + 1)
  const replicas = section.slice(at, next === -1 ? undefined : next)

  for (const name of ['TASK_REPLICA_ID', 'TASK_LEASE_MS', 'TASK_SWEEP_INTERVAL_MS', 'TASK_SWEEP_BATCH', 'TASK_MAX_INTERRUPTIONS', 'DATABASE_URL', 'TASK_DB_SCHEMA']) {
    t.match(replicas, new RegExp(`\\b${name}\\b`, 'u'), `names ${name}`)
  }
  for (const [pattern, what] of [
    [/sticky/u, 'no sticky sessions needed'],
    [/docker-compose\.postgres\.yml/u, 'the compose file'],
    [/deploy\/kubernetes\/postgres/u, 'the Kubernetes folder'],
    [/SESSION_BUSY/u, 'the 409 another replica answers'],
    [/`TASK_LEASE_MS` \+\s+`TASK_SWEEP_INTERVAL_MS`/u, 'the failover bound'],
    [/version/u, 'reads checked against the row version'],
    [/LISTEN\/NOTIFY/u, 'why not invalidation by notification'],
    [/`TASK_LEASE_MS`\/3/u, 'the cost of renewals'],
    [/storage\.replicas/u, '/stats lists the replicas'],
    [/\/ready/u, 'readiness follows the database'],
    [/\/api\/v1\/tasks\/events/u, 'the event stream across replicas'],
    [/may be made twice/u, 'an agent call may be made twice']
  ] as Array<[RegExp, string]>) t.match(replicas, pattern, what)

  // The Idempotency-Key is cited as the webhook agent sends it and as the Agents section says.
  const webhook = await read('services/runner/agents/webhook.ts')
  t.match(webhook, /'idempotency-key': `\$\{context\.session_id\}:\$\{task\.id\}:\$\{Date\.parse\(task\.created_at\)\}\$\{task\.retries === undefined \? '' : `:\$\{task\.retries\}`\}`/u, 'the webhook agent sends <session_id>:<task_id>:<created_ms>[:<retries>]')
  const agents = readme.slice(readme.indexOf('\n## Agents\n'), readme.indexOf('\n## ', readme.indexOf('\n## Agents\n') + 1))
  t.match(agents, /`Idempotency-Key: <session_id>:<task_id>:<created_ms>\[:<retries>\]`/u, 'as the Agents section says')
  t.match(replicas, /`Idempotency-Key: <session_id>:<task_id>:<created_ms>\[:<retries>\]`/u, 'and this subsection')

  t.notMatch(section, /run exactly one per schema/u, 'no longer says to run one server per schema')
  t.notMatch(section, /Recreate/u, 'nor that the Deployment is recreated')
  t.notMatch(section, /runs one replica/u, 'nor that the Deployment runs one replica')
  t.match(readme, /`deploy\/kubernetes\/postgres\/` instead: a Deployment of three\s+replicas/u, 'the Kubernetes section says three replicas')

  // The Settings table: the sweep settings next to TASK_LEASE_MS.
  const rows = readme.split('\n').filter((line) => line.startsWith('| `')).map((line) => /^\| `(\w+)`/u.exec(line)?.[1])
  const lease = rows.indexOf('TASK_LEASE_MS')
  t.ok(lease >= 0, 'TASK_LEASE_MS has a row')
  t.same(rows.slice(lease + 1, lease + 3), ['TASK_SWEEP_INTERVAL_MS', 'TASK_SWEEP_BATCH'], 'followed by TASK_SWEEP_INTERVAL_MS and TASK_SWEEP_BATCH')
})
