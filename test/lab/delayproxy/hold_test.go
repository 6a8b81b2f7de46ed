package delayproxy

import (
	"context"
	"net/http/httptest"
	"testing"
	"time"
)

func TestHistogramStats(t *testing.T) {
	var h Histogram
	if st := h.Stats(); st.Count != 0 || st.P50US != 0 || st.MaxUS != 0 {
		t.Errorf("empty: %+v", st)
	}
	// 1..100 ms in 1 ms steps minus 1µs: each lands in bucket [v-10µs, v).
	for i := 1; i <= 100; i++ {
		h.Record(time.Duration(i)*time.Millisecond - time.Microsecond)
	}
	st := h.Stats()
	want := HoldStats{Count: 100, MeanUS: 50499, P50US: 50000, P99US: 99000, MaxUS: 99999}
	if st != want {
		t.Errorf("got %+v, want %+v", st, want)
	}

	var small Histogram
	for _, d := range []time.Duration{3 * time.Microsecond, 15 * time.Microsecond, 15 * time.Microsecond, 400 * time.Microsecond} {
		small.Record(d)
	}
	st = small.Stats()
	// p50 rank 2 falls in [10µs, 20µs); p99 rank 4 in [400µs, 410µs), capped
	// at the maximum 400µs.
	if st.P50US != 20 || st.P99US != 400 || st.MaxUS != 400 || st.MeanUS != 108.25 {
		t.Errorf("small: %+v", st)
	}

	var over Histogram
	over.Record(time.Millisecond)
	over.Record(2 * time.Second)
	over.Record(3 * time.Second)
	if st := over.Stats(); st.P50US != 3_000_000 || st.P99US != 3_000_000 || st.MaxUS != 3_000_000 {
		t.Errorf("overflow: %+v", st)
	}
	var neg Histogram
	neg.Record(-time.Second)
	if st := neg.Stats(); st.Count != 1 || st.P50US != 0 {
		t.Errorf("negative: %+v", st)
	}
}

func TestHoldHandlerRoundTrip(t *testing.T) {
	var h Histogram
	h.Record(1500 * time.Microsecond)
	srv := httptest.NewServer(HoldHandler(func() HoldStats {
		st := h.Stats()
		st.Configured = Delay{Base: time.Millisecond, Jitter: 250 * time.Microsecond}.String()
		return st
	}))
	defer srv.Close()
	st, err := FetchHold(context.Background(), srv.URL+"/hold")
	if err != nil {
		t.Fatal(err)
	}
	want := HoldStats{Count: 1, MeanUS: 1500, P50US: 1500, P99US: 1500, MaxUS: 1500, Configured: "1ms + exp(mean 250µs)"}
	if st != want {
		t.Errorf("got %+v, want %+v", st, want)
	}
	if _, err := ParseHold([]byte("not json")); err == nil {
		t.Error("ParseHold accepted garbage")
	}
	st, err = ParseHold([]byte(`{"count":3,"mean_us":1.5,"p50_us":2,"p99_us":3,"max_us":4,"configured":"x"}`))
	if err != nil || st != (HoldStats{Count: 3, MeanUS: 1.5, P50US: 2, P99US: 3, MaxUS: 4, Configured: "x"}) {
		t.Errorf("ParseHold: %+v %v", st, err)
	}
}
