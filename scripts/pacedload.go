// pacedload: a paced HTTP(S) load with microsecond latencies, for scripts/bench_capture.sh's
// latency rounds. hey (Go's TLS, so the TLS source's probes on the system's libssl do not trap
// the client; this is Go too) prints latencies to 0.1 ms: a sixth of a 0.6 ms p99, coarser than
// the 5-10% the goals are about. This client is hey's -z/-c/-q run with the times kept to the
// microsecond.
//
// Each of -c workers owns one keep-alive connection and sends at -q requests/s on an anchored
// schedule (the k-th request is due at start + k/q: a late wake-up does not lower the rate, as
// hey's ticker does on a VM with coarse timers); a request's latency runs from its send to the
// last byte of its body. Output, on stdout: one latency a line, in milliseconds with three
// decimals, for each 200 answer; errors are counted on stderr.
//
//	go build -o pacedload scripts/pacedload.go
//	pacedload -z 10s -c 8 -q 125 https://10.250.9.2:8443/bench
package main

import (
	"bufio"
	"crypto/tls"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"sync"
	"time"
)

func main() {
	duration := flag.Duration("z", 10*time.Second, "how long to send")
	conns := flag.Int("c", 8, "workers, one keep-alive connection each")
	perWorker := flag.Float64("q", 125, "requests a second a worker")
	flag.Parse()
	if flag.NArg() != 1 || *conns < 1 || *perWorker <= 0 {
		fmt.Fprintln(os.Stderr, "usage: pacedload [-z 10s] [-c 8] [-q 125] URL")
		os.Exit(2)
	}
	url := flag.Arg(0)
	interval := time.Duration(float64(time.Second) / *perWorker)
	start := time.Now()
	end := start.Add(*duration)
	results := make([][]time.Duration, *conns)
	errors := make([]int, *conns)
	var wg sync.WaitGroup
	for w := 0; w < *conns; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			client := &http.Client{Transport: &http.Transport{
				TLSClientConfig:     &tls.Config{InsecureSkipVerify: true}, // the bench's own certificate
				MaxIdleConnsPerHost: 1,
				DisableCompression:  true,
			}}
			// Workers start spread over one interval, not all at once.
			due := start.Add(interval * time.Duration(w) / time.Duration(*conns))
			for due.Before(end) {
				if wait := time.Until(due); wait > 0 {
					time.Sleep(wait)
				}
				t0 := time.Now()
				resp, err := client.Get(url)
				if err == nil {
					_, err = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
				took := time.Since(t0)
				if err != nil || resp.StatusCode != 200 {
					errors[w]++
				} else {
					results[w] = append(results[w], took)
				}
				due = due.Add(interval)
			}
		}(w)
	}
	wg.Wait()
	out := bufio.NewWriter(os.Stdout)
	failed := 0
	for w := range results {
		failed += errors[w]
		for _, d := range results[w] {
			fmt.Fprintf(out, "%.3f\n", float64(d.Microseconds())/1000)
		}
	}
	out.Flush()
	fmt.Fprintf(os.Stderr, "pacedload: %d errors\n", failed)
}
