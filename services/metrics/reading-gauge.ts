/**
 * A gauge read at scrape time that has no sample while its reading fails (null), registered on
 * a prom-client Registry as a custom metric: prom-client's own Gauge keeps its last value, or
 * shows 0 before the first, and either would read as a fact.
 */
export class ReadingGauge {
  readonly type = 'gauge'
  readonly aggregator = 'sum'

  constructor (readonly name: string, readonly help: string, private readonly read: () => Promise<number | null>) {}

  /** What prom-client's Registry reads on a scrape. */
  async get (): Promise<{ name: string, help: string, type: string, aggregator: string, values: Array<{ labels: Record<string, string>, value: number }> }> {
    const value = await this.read()
    return { name: this.name, help: this.help, type: this.type, aggregator: this.aggregator, values: value === null ? [] : [{ labels: {}, value }] }
  }

  /** Nothing kept between scrapes: nothing to reset. */
  reset (): void {}
}
