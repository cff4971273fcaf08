/**
 * The deployment files, read as the tools read them (no cluster, no Docker daemon needed):
 * the Kubernetes manifests, docker-compose.yml and the Dockerfile keep the promises the
 * service depends on: one writer on a persistent volume, probes on the right paths and port,
 * a grace period longer than the drain, non-root with a writable volume, keys from a Secret,
 * and settings the service accepts.
 */
import t from 'tap'
import { parse } from 'yaml'
import { loadConfig } from '../plugins/config.js'
import { stopMs, manifests as manifestsOf, plainEnv, read, resolvePort, type Doc } from './manifests.js'

const manifests = async (): Promise<Doc[]> => manifestsOf('deploy/kubernetes')

t.test('Kubernetes: one writer, a persistent volume, probes, grace period, non-root, keys from a Secret', async (t) => {
  const docs = await manifests()
  const workloads = docs.filter((doc) => doc.kind === 'StatefulSet' || doc.kind === 'Deployment')
  t.equal(workloads.length, 1, 'one workload')
  const workload = workloads[0] as Doc
  t.equal(workload.spec.replicas, 1, 'one replica: the storage folder has a single writer')
  if (workload.kind === 'Deployment') t.equal(workload.spec.strategy?.type, 'Recreate', 'the old pod is gone before the new one starts')

  const pod = workload.spec.template.spec as Doc
  t.same(workload.spec.selector.matchLabels, Object.fromEntries(Object.entries(workload.spec.template.metadata.labels).filter(([key]) => key in workload.spec.selector.matchLabels)), 'the selector matches the pod labels')
  const container = (pod.containers as Doc[]).find((item) => item.name === 'taskvault') as Doc
  t.ok(container, 'the taskvault container')
  const env = plainEnv(container.env)
  const port = Number(env.PORT)
  t.equal(resolvePort('http', container), port, 'the container port is the PORT setting')
  t.equal(env.HOST, '0.0.0.0', 'listens beyond loopback inside the pod')

  // Storage: the mount is TASK_STORAGE_DIR, backed by a ReadWriteOnce claim.
  const mount = (container.volumeMounts as Doc[]).find((item) => item.mountPath === env.TASK_STORAGE_DIR)
  t.ok(mount, `a volume is mounted at TASK_STORAGE_DIR (${env.TASK_STORAGE_DIR})`)
  const template = (workload.spec.volumeClaimTemplates as Doc[] | undefined)?.find((item) => item.metadata.name === mount?.name)
  const volume = (pod.volumes as Doc[] | undefined)?.find((item) => item.name === mount?.name)
  const claim = template ?? docs.find((doc) => doc.kind === 'PersistentVolumeClaim' && doc.metadata.name === volume?.persistentVolumeClaim?.claimName)
  t.ok(claim, 'the mount is a PersistentVolumeClaim')
  t.same(claim?.spec.accessModes, ['ReadWriteOnce'])
  t.ok(claim?.spec.resources.requests.storage, 'with a size')

  // Non-root, and the volume writable by it.
  t.equal(pod.securityContext.runAsNonRoot, true)
  t.ok(pod.securityContext.runAsUser > 0, 'a non-root uid')
  t.ok(Number.isInteger(pod.securityContext.fsGroup), 'fsGroup makes the volume writable')
  t.equal(container.securityContext?.allowPrivilegeEscalation, false)

  // Probes.
  t.equal(container.livenessProbe.httpGet.path, '/health')
  t.equal(container.readinessProbe.httpGet.path, '/ready')
  for (const name of ['livenessProbe', 'readinessProbe', 'startupProbe']) {
    t.equal(resolvePort(container[name].httpGet.port, container), port, `${name} on the container's PORT`)
  }
  const startup = container.startupProbe as Doc
  t.ok(startup.periodSeconds * startup.failureThreshold >= 300, 'the startup probe waits at least 5 minutes for a big restore')

  // Shutdown: preStop, then the drain, then flushing writes, all inside the grace period.
  const graceMs = Number(env.TASK_SHUTDOWN_GRACE_MS)
  const preStopMs = Number(container.lifecycle?.preStop?.exec?.command?.[1] ?? 0) * 1000
  t.ok(graceMs > 0, 'TASK_SHUTDOWN_GRACE_MS is set in the manifest')
  t.ok(pod.terminationGracePeriodSeconds * 1000 > graceMs, 'terminationGracePeriodSeconds is above TASK_SHUTDOWN_GRACE_MS')
  t.ok(pod.terminationGracePeriodSeconds * 1000 >= preStopMs + stopMs(env), 'and leaves time for preStop, the streams\' last events and the flush')

  t.ok(container.resources.requests.cpu && container.resources.requests.memory, 'resource requests')
  t.ok(container.resources.limits.memory, 'a memory limit')

  const keys = (container.env as Doc[]).find((item) => item.name === 'TASK_API_KEYS')
  t.notOk(keys?.value, 'no key in the manifest itself')
  t.ok(keys?.valueFrom?.secretKeyRef?.name && keys.valueFrom.secretKeyRef.key, 'TASK_API_KEYS from a Secret')

  const services = docs.filter((doc) => doc.kind === 'Service')
  t.ok(services.length > 0, 'a Service')
  for (const service of services) {
    t.same(service.spec.selector, workload.spec.selector.matchLabels, `${service.metadata.name} selects the pod`)
    t.ok((service.spec.ports as Doc[]).every((item) => resolvePort(item.targetPort, container) === port), `${service.metadata.name} targets the container port`)
  }
  if (workload.kind === 'StatefulSet') t.ok(services.some((s) => s.metadata.name === workload.spec.serviceName), 'the governing service exists')

  await t.resolves(loadConfig({ values: env, readEnvironment: false }), 'every setting in the manifest is one the service accepts')
})

t.test('docker-compose.yml: a named volume at TASK_STORAGE_DIR, a stop grace above the drain', async (t) => {
  const compose = parse(await read('docker-compose.yml')) as Doc
  const service = compose.services.taskvault as Doc
  const env = Object.fromEntries((service.environment as string[]).map((item) => item.split('=', 2) as [string, string]))
  t.equal(env.TASK_STORAGE_DIR, '/app/data/tasks')
  const [volume, path] = (service.volumes[0] as string).split(':')
  t.equal(path, env.TASK_STORAGE_DIR, 'the volume is mounted at TASK_STORAGE_DIR')
  t.ok(volume !== undefined && volume in compose.volumes, 'a named volume, declared')
  const stopGraceMs = Number(/^(\d+)s$/u.exec(service.stop_grace_period)?.[1]) * 1000
  t.ok(stopGraceMs >= stopMs(env), 'stop_grace_period covers the drain, the streams\' last events and the flush')
  const { TASK_API_KEYS: _keys, ...settings } = env
  await t.resolves(loadConfig({ values: settings, readEnvironment: false }))
})

/** The Dockerfile's instructions, continuation lines joined, comments dropped. */
function instructions (text: string): Array<{ op: string, args: string }> {
  return text.replace(/\\\n/gu, ' ').split('\n').map((line) => line.trim()).filter((line) => line !== '' && !line.startsWith('#'))
    .map((line) => {
      const [op = '', ...rest] = line.split(/\s+/u)
      return { op: op.toUpperCase(), args: rest.join(' ') }
    })
}

/** Node LTS majors and their end of life (nodejs.org/en/about/previous-releases). */
const NODE_LTS_END: Record<string, string> = { 22: '2027-04-30', 24: '2028-04-30' }

t.test('Dockerfile: multi-stage on a supported Node LTS pinned to a minor, production dependencies, non-root, volume, healthcheck, tini as PID 1', async (t) => {
  const all = instructions(await read('Dockerfile'))
  // ARGs before the first FROM may name the base image; their defaults are what a plain build uses.
  const args = new Map(all.slice(0, all.findIndex((item) => item.op === 'FROM')).filter((item) => item.op === 'ARG')
    .map((item) => item.args.split('=', 2) as [string, string]))
  const froms = all.filter((item) => item.op === 'FROM')
  t.ok(froms.length >= 2, 'multi-stage')
  for (const from of froms) {
    const image = (from.args.split(/\s+/u)[0] ?? '').replace(/\$\{(\w+)\}|\$(\w+)/gu, (_, a: string | undefined, b: string | undefined) => args.get(a ?? b ?? '') ?? '')
    const [, major = '', minor] = /^node:(\d+)\.(\d+)-slim(@sha256:[0-9a-f]{64})?$/u.exec(image) ?? []
    t.ok(minor !== undefined, `${image}: node:<major>.<minor>-slim, optionally with a digest`)
    const end = NODE_LTS_END[major]
    t.ok(end !== undefined && new Date(end) > new Date(), `${image}: Node ${major} is an LTS still supported${end === undefined ? '' : ` (to ${end})`}`)
  }
  const final = all.slice(all.lastIndexOf(froms[froms.length - 1] as { op: string, args: string }))

  const stages = new Map<string, string>()
  let current = ''
  for (const item of all) {
    if (item.op === 'FROM') current = /\bAS\s+(\S+)/iu.exec(item.args)?.[1] ?? ''
    else if (item.op === 'RUN') stages.set(current, `${stages.get(current) ?? ''} ${item.args}`)
  }
  const modules = final.find((item) => item.op === 'COPY' && /\/node_modules\b/u.test(item.args))
  const from = /--from=(\S+)/u.exec(modules?.args ?? '')?.[1] ?? ''
  t.match(stages.get(from), /npm ci --omit=dev/, 'node_modules come from a production-only install')

  const env = final.filter((item) => item.op === 'ENV').map((item) => item.args).join(' ')
  t.match(env, /\bHOST=0\.0\.0\.0\b/)
  const storage = /\bTASK_STORAGE_DIR=(\S+)/u.exec(env)?.[1]
  t.equal(storage, '/app/data/tasks')
  t.match(final.find((item) => item.op === 'VOLUME')?.args, new RegExp(`"${storage}"|\\s${storage}\\b|^${storage}$`), 'the storage folder is a volume')
  const user = final.filter((item) => item.op === 'USER').at(-1)?.args ?? ''
  t.match(user, /^[1-9]\d*(:\d+)?$/, 'a numeric non-root user (verifiable by runAsNonRoot)')
  t.match(final.find((item) => item.op === 'HEALTHCHECK')?.args, /\/health/)
  const cmd = JSON.parse(final.filter((item) => item.op === 'CMD').at(-1)?.args ?? 'null') as unknown
  t.same(cmd, ['node', 'dist/server.js'], 'exec form: no shell between tini and node')
  // tini as PID 1 reaps orphans (Node does not) and forwards SIGTERM to node.
  const entrypoint = JSON.parse(final.filter((item) => item.op === 'ENTRYPOINT').at(-1)?.args ?? 'null') as string[] | null
  t.ok(entrypoint !== null && entrypoint[0] === '/usr/bin/tini' && entrypoint.at(-1) === '--' && entrypoint.slice(1, -1).every((flag) => ['-g', '-s'].includes(flag)), `tini is PID 1 in exec form: ${JSON.stringify(entrypoint)}`)
  t.match(final.filter((item) => item.op === 'RUN').map((item) => item.args).join(' '), /apt-get install -y (--no-install-recommends )?tini\b/, 'Debian\'s tini, installed in the final stage')

  const ignored = (await read('.dockerignore')).split('\n').map((line) => line.trim())
  for (const path of ['node_modules', 'dist', 'data', '.git']) t.ok(ignored.includes(path), `.dockerignore leaves out ${path}`)
})
