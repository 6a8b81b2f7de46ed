package junk

import "strings"

// maxLabels is the most labels a name off the wire can have: 127 one-octet
// labels and the root fill the 255 octets a name may take.
const maxLabels = 127

// labels is a domain name in presentation format split into its labels, left
// to right, without allocating: ServeDNS sees every query of the server
// block, so splitting must cost no more than a walk over the name.
type labels struct {
	name  string
	start [maxLabels]uint16
	end   [maxLabels]uint16
	n     int
}

// split splits name into labels, honouring escapes (`\.` and `\DDD` never
// end a label). It reports false for names no client can send: empty labels,
// more than maxLabels labels or more octets than presentation format allows.
// The root has zero labels; a missing trailing dot is tolerated.
func (l *labels) split(name string) bool {
	l.name, l.n = name, 0
	if len(name) > 4*255 {
		return false
	}
	if name == "." {
		return true
	}
	begin := 0
	for i := 0; i < len(name); i++ {
		switch name[i] {
		case '\\':
			i++ // the escaped octet, or the first digit of \DDD, is never a dot
		case '.':
			if !l.add(begin, i) {
				return false
			}
			begin = i + 1
		}
	}
	if begin < len(name) {
		return l.add(begin, len(name))
	}
	return true
}

func (l *labels) add(begin, end int) bool {
	if begin == end || l.n == maxLabels {
		return false
	}
	l.start[l.n], l.end[l.n] = uint16(begin), uint16(end)
	l.n++
	return true
}

// label returns label i, counted from the left.
func (l *labels) label(i int) string { return l.name[l.start[i]:l.end[i]] }

// is reports whether label i is s, ignoring ASCII case as DNS does.
func (l *labels) is(i int, s string) bool { return strings.EqualFold(l.label(i), s) }

// under reports whether the name ends in zone (lower-case labels, left to
// right) and returns how many labels come before it.
func (l *labels) under(zone []string) (before int, ok bool) {
	before = l.n - len(zone)
	if before < 0 {
		return 0, false
	}
	for i, z := range zone {
		if !l.is(before+i, z) {
			return 0, false
		}
	}
	return before, true
}
