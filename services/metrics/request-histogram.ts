/** One series: counts per bucket (cumulative only when read), their sum and their count. */
interface Series {
  labels: Record<string, string>
  buckets: Float64Array
  sum: number
  count: number
}

interface MetricValue {
  labels: Record<string, string | number>
  value: number
  metricName: string
}

/**
 * A Prometheus histogram of request durations, registered on a prom-client Registry as a
 * custom metric. prom-client's Histogram validates and hashes its labels on every observe
 * (about a microsecond, a tenth of a cheap request); this one finds the series by a string key
 * and does the formatting work only when scraped.
 */
export class RequestHistogram {
  readonly type = 'histogram'
  readonly aggregator = 'sum'
  private readonly series = new Map<string, Series>()

  constructor (readonly name: string, readonly help: string, private readonly upperBounds: readonly number[]) {}

  observe (method: string, route: string, statusCode: number, seconds: number): void {
    const key = `${method} ${statusCode} ${route}`
    let series = this.series.get(key)
    if (series === undefined) {
      series = { labels: { method, route, status_code: String(statusCode) }, buckets: new Float64Array(this.upperBounds.length), sum: 0, count: 0 }
      this.series.set(key, series)
    }
    // Counted in the first bucket that holds it; beyond the last, only in +Inf (the count).
    for (let i = 0; i < this.upperBounds.length; i++) {
      if (seconds <= (this.upperBounds[i] as number)) {
        (series.buckets[i] as number)++
        break
      }
    }
    series.sum += seconds
    series.count++
  }

  /** What prom-client's Registry reads on a scrape. */
  async get (): Promise<{ name: string, help: string, type: string, aggregator: string, values: MetricValue[] }> {
    const values: MetricValue[] = []
    for (const { labels, buckets, sum, count } of this.series.values()) {
      let cumulative = 0
      this.upperBounds.forEach((bound, i) => {
        cumulative += buckets[i] as number
        values.push({ labels: { le: bound, ...labels }, value: cumulative, metricName: `${this.name}_bucket` })
      })
      values.push({ labels: { le: '+Inf', ...labels }, value: count, metricName: `${this.name}_bucket` })
      values.push({ labels, value: sum, metricName: `${this.name}_sum` })
      values.push({ labels, value: count, metricName: `${this.name}_count` })
    }
    return { name: this.name, help: this.help, type: this.type, aggregator: this.aggregator, values }
  }

  reset (): void {
    this.series.clear()
  }
}
