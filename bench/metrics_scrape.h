/* Reads the coordinator's Prometheus endpoint (metrics_listen) so bench/serve can wait
 * for pool workers to join and report the embedding cache's hits and misses: one plain
 * HTTP/1.1 GET /metrics over a socket, and a lookup of one sample line. */
#ifndef MM_BENCH_METRICS_SCRAPE_H
#define MM_BENCH_METRICS_SCRAPE_H

/* GET /metrics from "host:port" (IPv4 or a name). 0 and *text (malloc'd body, free())
 * on a 200 reply; -1 with a message on stderr otherwise. */
int metrics_scrape(const char *hostport, char **text);
/* The value of the sample "series value" (series with its labels, e.g.
 * metamorph_pool_workers{pool="encode"}) in text; NAN when absent. */
double metrics_sample(const char *text, const char *series);
/* metrics_scrape + metrics_sample; NAN when the scrape fails. */
double metrics_get(const char *hostport, const char *series);

#endif
