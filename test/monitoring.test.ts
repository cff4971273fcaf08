/**
 * The monitoring files of deploy/: the alert rules pass `promtool check rules` and their unit
 * tests (`promtool test rules`), the PrometheusRule holds the same rules, every PromQL of the
 * Grafana dashboard is valid, every rule links a README runbook section, and every metric the
 * rules and the dashboard name exists on a real server's /metrics.
 */
import { execFile } from 'node:child_process'
import { mkdir, readFile, rename, rm, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { promisify } from 'node:util'
import t from 'tap'
import { parse, stringify } from 'yaml'
import { build, memoryLog, post, tempDir } from './helper.js'
import { scratch } from './server-process.js'

const run = promisify(execFile)
type TapTest = Parameters<Parameters<typeof t.test>[0]>[0]
const ROOT = fileURLToPath(new URL('../../', import.meta.url))
const ALERTS = join(ROOT, 'deploy/prometheus/alerts.yml')
const ALERTS_TEST = join(ROOT, 'deploy/prometheus/alerts.test.yml')
const RULE_OBJECT = join(ROOT, 'deploy/kubernetes/prometheusrule.yaml')
const DASHBOARD = join(ROOT, 'deploy/grafana/taskvault.json')

interface Rule { alert?: string, record?: string, expr: string, for?: string, labels?: Record<string, string>, annotations?: Record<string, string> }
interface RuleFile { groups: Array<{ name: string, rules: Rule[] }> }
interface Target { expr: string, datasource?: { type?: string, uid?: string } }
interface Panel { title: string, datasource?: { type?: string, uid?: string }, targets?: Target[] }

/** Grafana's own variables, replaced by what Grafana would put there, so promtool can parse the query. */
const GRAFANA_VARIABLES: Record<string, string> = { $__rate_interval: '5m', $instance: '.*' }

/**
 * promtool's path. Missing on a developer machine: the test says so and skips. Missing in CI
 * (CI set): the test fails, because .ci/run installs it and these checks must run there.
 */
async function promtool (t: TapTest): Promise<string | null> {
  const found = await run('sh', ['-c', 'command -v promtool']).then(({ stdout }) => stdout.trim(), () => '')
  if (found !== '') return found
  if (process.env.CI !== undefined && process.env.CI !== '') {
    t.fail('promtool is missing, and CI is set: install Debian\'s prometheus package (apt-get install --no-install-recommends prometheus)')
  } else {
    t.plan(0, 'skipped: promtool is not installed (apt-get install --no-install-recommends prometheus); in CI this fails')
  }
  return null
}

async function promtoolRun (bin: string, args: string[], cwd: string): Promise<{ ok: boolean, output: string }> {
  try {
    const { stdout, stderr } = await run(bin, args, { cwd, timeout: 60_000 })
    return { ok: true, output: stdout + stderr }
  } catch (err) {
    const e = err as { stdout?: string, stderr?: string, message: string }
    return { ok: false, output: `${e.stdout ?? ''}${e.stderr ?? ''}${e.message}` }
  }
}

async function alertRules (): Promise<Rule[]> {
  return (parse(await readFile(ALERTS, 'utf8')) as RuleFile).groups.flatMap((group) => group.rules)
}

async function dashboard (): Promise<{ doc: Record<string, any>, panels: Panel[] }> {
  const doc = JSON.parse(await readFile(DASHBOARD, 'utf8')) as Record<string, any>
  const panels: Panel[] = []
  const walk = (list: Panel[] | undefined): void => {
    for (const panel of list ?? []) {
      panels.push(panel)
      walk((panel as { panels?: Panel[] }).panels)
    }
  }
  walk(doc.panels as Panel[])
  return { doc, panels }
}

const withGrafanaVariables = (expr: string): string => expr.replace(/\$__rate_interval|\$instance/gu, (name) => GRAFANA_VARIABLES[name] as string)

t.test('promtool: the alert rules check, and their unit tests pass', async (t) => {
  const bin = await promtool(t)
  if (bin === null) return
  const check = await promtoolRun(bin, ['check', 'rules', ALERTS], ROOT)
  t.ok(check.ok, 'promtool check rules deploy/prometheus/alerts.yml', { output: check.output })
  t.match(check.output, /SUCCESS: 6 rules found/u)
  const tests = await promtoolRun(bin, ['test', 'rules', ALERTS_TEST], join(ROOT, 'deploy/prometheus'))
  t.ok(tests.ok, 'promtool test rules deploy/prometheus/alerts.test.yml', { output: tests.output })

  // Every alert is driven by the unit tests, both firing and silent.
  const unit = parse(await readFile(ALERTS_TEST, 'utf8')) as { tests: Array<{ alert_rule_test: Array<{ alertname: string, exp_alerts: unknown[] }> }> }
  const cases = unit.tests.flatMap((test) => test.alert_rule_test)
  for (const { alert } of await alertRules()) {
    t.ok(cases.some((c) => c.alertname === alert && c.exp_alerts.length > 0), `${alert ?? ''}: a case where it fires`)
    t.ok(cases.some((c) => c.alertname === alert && c.exp_alerts.length === 0), `${alert ?? ''}: a case where it stays silent`)
  }
})

t.test('promtool: every PromQL expression of the Grafana dashboard is valid', async (t) => {
  const bin = await promtool(t)
  if (bin === null) return
  const { panels } = await dashboard()
  const rules: Rule[] = []
  for (const panel of panels) {
    for (const [i, target] of (panel.targets ?? []).entries()) {
      rules.push({ record: `dashboard:${panel.title.toLowerCase().replace(/[^a-z0-9]+/gu, '_')}:${i}`, expr: withGrafanaVariables(target.expr) })
    }
  }
  t.ok(rules.length >= 10, `${rules.length} queries`)
  const file = join(await tempDir(t, 'taskvault-promql-'), 'dashboard-rules.yml')
  await writeFile(file, stringify({ groups: [{ name: 'dashboard', rules }] }))
  const check = await promtoolRun(bin, ['check', 'rules', file], ROOT)
  t.ok(check.ok, 'promtool check rules on the dashboard\'s queries as recording rules', { output: check.output })
  t.match(check.output, new RegExp(`SUCCESS: ${rules.length} rules found`, 'u'))
})

t.test('each alert has a severity, a summary, a description with its value, and a runbook in the README', async (t) => {
  const readme = await readFile(join(ROOT, 'README.md'), 'utf8')
  const runbook = /\n## Runbook\n([\s\S]*?)(?=\n## )/u.exec(readme)?.[1] ?? ''
  t.not(runbook, '', 'the README has a Runbook section')
  const anchors = new Set([...runbook.matchAll(/^### (.+)$/gmu)].map((m) => (m[1] as string).trim().toLowerCase().replace(/[^a-z0-9 _-]/gu, '').replace(/ /gu, '-')))
  const rules = await alertRules()
  t.same(rules.map((rule) => rule.alert).sort(), [
    'TaskvaultAgentFailures', 'TaskvaultDiskSpaceLow', 'TaskvaultFailedLoads', 'TaskvaultNotReady', 'TaskvaultSaveFailures', 'TaskvaultTooManyActiveSessions'
  ], 'the alerts the issue asks for')
  for (const rule of rules) {
    const name = rule.alert ?? ''
    t.match(rule.labels?.severity, /^(critical|warning)$/u, `${name}: severity`)
    t.ok((rule.annotations?.summary ?? '') !== '', `${name}: summary`)
    t.match(rule.annotations?.description, /\$value/u, `${name}: the description shows the value`)
    const url = rule.annotations?.runbook_url ?? ''
    t.match(url, /^README\.md#/u, `${name}: runbook_url points into the README`)
    t.ok(anchors.has(url.slice('README.md#'.length)), `${name}: the README's Runbook has the section ${url}`)
  }
})

t.test('the PrometheusRule holds exactly the rules of alerts.yml', async (t) => {
  const object = parse(await readFile(RULE_OBJECT, 'utf8')) as { apiVersion: string, kind: string, spec: RuleFile }
  t.equal(object.apiVersion, 'monitoring.coreos.com/v1')
  t.equal(object.kind, 'PrometheusRule')
  t.same(object.spec, parse(await readFile(ALERTS, 'utf8')), 'spec.groups equals deploy/prometheus/alerts.yml')
})

t.test('the dashboard picks its data source through ${datasource}, with no hard-coded uid', async (t) => {
  const { doc, panels } = await dashboard()
  const variable = (doc.templating?.list as Array<{ name: string, type: string, query: string }>).find((v) => v.name === 'datasource')
  t.match(variable, { type: 'datasource', query: 'prometheus' }, 'a datasource variable of type prometheus')
  t.notOk('uid' in doc && doc.uid !== null, 'the dashboard itself has no fixed uid (Grafana assigns one at import)')
  for (const panel of panels) {
    if (panel.targets === undefined) continue
    t.equal(panel.datasource?.uid, '${datasource}', `${panel.title}: data source`)
    for (const target of panel.targets) t.equal(target.datasource?.uid ?? '${datasource}', '${datasource}', `${panel.title}: query data source`)
  }
  const uids = [...JSON.stringify(doc).matchAll(/"uid":\s*"([^"]*)"/gu)].map((m) => m[1])
  t.same([...new Set(uids)], ['${datasource}'], 'no other uid anywhere')
  const titles = panels.map((panel) => panel.title)
  for (const wanted of ['Sessions by state', 'Tasks by status', 'Tasks finished per second', 'Save latency', 'Agent calls by outcome', 'Agent call duration p99', 'Disk free', 'Restore time', 'HTTP requests by route and status']) {
    t.ok(titles.includes(wanted), `a panel '${wanted}'`)
  }
})

/** Metric names a PromQL expression reads (label names, functions, keywords and numbers left out). */
function metricNames (expr: string): string[] {
  const bare = withGrafanaVariables(expr)
    .replace(/"(?:[^"\\]|\\.)*"/gu, '""')
    .replace(/\{[^}]*\}/gu, '')
    .replace(/\[[^\]]*\]/gu, '')
    .replace(/\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)/gu, '')
  const keywords = new Set(['and', 'or', 'unless', 'bool', 'offset', 'inf', 'nan'])
  // Whole words only: a name followed by '(' is a function.
  return [...bare.matchAll(/[a-zA-Z_:][a-zA-Z0-9_:]*/gu)]
    .filter((m) => !/^\s*\(/u.test(bare.slice((m.index ?? 0) + m[0].length)))
    .map((m) => m[0])
    .filter((name) => !keywords.has(name.toLowerCase()))
}

t.test('every metric the rules and the dashboard use is on a real server\'s /metrics', async (t) => {
  const work = await scratch(t, { prefix: 'taskvault-monitoring-' })
  const server = await work.start({ TASK_STORAGE_DIR: join(work.dir, 'tasks') })
  const res = await fetch(`${server.base}/metrics`)
  t.equal(res.status, 200)
  const text = await res.text()
  // Each family's TYPE line, and the series a histogram or summary family exposes.
  const exposed = new Set<string>()
  for (const [, name, type] of text.matchAll(/^# TYPE (\S+) (\S+)$/gmu)) {
    exposed.add(name as string)
    if (type === 'histogram') for (const suffix of ['_bucket', '_sum', '_count']) exposed.add(`${name as string}${suffix}`)
    if (type === 'summary') for (const suffix of ['_sum', '_count']) exposed.add(`${name as string}${suffix}`)
  }
  const used = new Map<string, string>()
  for (const rule of await alertRules()) for (const name of metricNames(rule.expr)) used.set(name, `alert ${rule.alert ?? ''}`)
  for (const panel of (await dashboard()).panels) {
    for (const target of panel.targets ?? []) for (const name of metricNames(target.expr)) used.set(name, `panel '${panel.title}'`)
  }
  // `up` is Prometheus' own series for each scrape target, never the server's.
  used.delete('up')
  t.ok(used.size >= 10, `${used.size} metric names used: ${[...used.keys()].join(', ')}`)
  for (const [name, where] of used) t.ok(exposed.has(name), `${name} (${where}) is exposed`)
})

t.test('a storage folder gone from under the server: /ready 503 and taskvault_ready 0, until it is back', async (t) => {
  const dir = await tempDir(t)
  const log = memoryLog()
  const app = await build(t, { dir, logger: log.logger })
  const ready = async (): Promise<[number, string | undefined]> => [
    (await app.inject({ method: 'GET', url: '/ready' })).statusCode,
    (await app.inject({ method: 'GET', url: '/metrics' })).body.split('\n').find((line) => line.startsWith('taskvault_ready '))
  ]
  t.same(await ready(), [200, 'taskvault_ready 1'])
  // The volume goes (nothing at the path), then the same folder comes back (the volume mounted again).
  t.teardown(async () => rm(`${dir}-away`, { recursive: true, force: true }))
  const before = log.lines().length
  await rename(dir, `${dir}-away`)
  t.same(await ready(), [503, 'taskvault_ready 0'], 'a folder gone (an unmounted volume) is not ready')
  t.match((await app.inject({ method: 'GET', url: '/ready' })).json(), { code: 'STORAGE_UNAVAILABLE' })
  for (let probe = 0; probe < 5; probe++) t.equal((await app.inject({ method: 'GET', url: '/ready' })).statusCode, 503)
  // A probe every few seconds for the whole outage: one warning, not an error with its stack per probe.
  const outage = log.lines().slice(before).filter((line) => line.level >= 40)
  t.same(outage.map((line) => [line.level, line.msg]), [[40, 'readiness probes fail: the storage is not usable']], 'seven failed probes, one warning')
  t.match(outage[0]?.err, { code: 'STORAGE_UNAVAILABLE' }, 'naming the fault')
  await rename(`${dir}-away`, dir)
  t.same(await ready(), [200, 'taskvault_ready 1'], 'ready again once it is back')
  t.match(log.lines().find((line) => line.msg === 'readiness probes pass again: the storage is usable'), { level: 30, failures: 7 }, 'and its end, with the count')
  // Another folder made at the path is not it: what this server wrote is not there (storage-ownership.test.ts).
  await rename(dir, `${dir}-away`)
  await mkdir(dir)
  t.match([...await ready(), (await app.inject({ method: 'GET', url: '/ready' })).json()], [503, 'taskvault_ready 0', { code: 'LOCK_LOST' }], 'a new empty folder there is not')
})

t.test('the series the rules add move: tasks finished by status, ready', async (t) => {
  const app = await build(t, { executors: { Coding: async () => { throw new Error('compiler crashed') }, default: async (task) => ({ result: task.instruction }) } })
  const sample = async (line: string): Promise<number | null> => {
    const text = (await app.inject({ method: 'GET', url: '/metrics' })).body
    const found = text.split('\n').find((l) => l.startsWith(`${line} `))
    return found === undefined ? null : Number(found.slice(line.length + 1))
  }
  t.equal(await sample('taskvault_tasks_finished_total{status="Completed"}'), 0, 'both statuses exported from the start')
  t.equal(await sample('taskvault_tasks_finished_total{status="Failed"}'), 0)
  t.equal(await sample('taskvault_ready'), 1)
  t.equal((await post(app, '/create', { session_id: 'm', tasks: [{ instruction: 'a', task_type: 'General' }, { instruction: 'b', task_type: 'Coding' }] })).statusCode, 200)
  t.equal((await post(app, '/execute', { session_id: 'm' })).json().status, 'Completed')
  t.equal((await post(app, '/execute', { session_id: 'm' })).json().status, 'Failed')
  t.equal(await sample('taskvault_tasks_finished_total{status="Completed"}'), 1)
  t.equal(await sample('taskvault_tasks_finished_total{status="Failed"}'), 1)
  await app.taskManager.beginShutdown()
  t.equal(await sample('taskvault_ready'), 0, '0 once shutdown begins, like /ready')
})
