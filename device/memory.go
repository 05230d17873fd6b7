package device

import "sync"

// Memory is an in-memory Device for tests. It keeps, besides the current
// contents, the contents as of the last Flush, so a test can simulate a power
// failure with Crash (every write not followed by a Flush is lost).
type Memory struct {
	mu      sync.RWMutex // guards data and durable
	data    []byte
	durable []byte
}

// NewMemory returns a zeroed in-memory device of size bytes.
func NewMemory(size int64) *Memory {
	return &Memory{data: make([]byte, size), durable: make([]byte, size)}
}

func (m *Memory) Size() int64 {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return int64(len(m.data))
}

func (m *Memory) Close() error { return nil }

func (m *Memory) ReadAt(p []byte, off int64) (int, error) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	if err := CheckRange(int64(len(m.data)), off, int64(len(p))); err != nil {
		return 0, err
	}
	return copy(p, m.data[off:]), nil
}

func (m *Memory) WriteAt(p []byte, off int64) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := CheckRange(int64(len(m.data)), off, int64(len(p))); err != nil {
		return 0, err
	}
	return copy(m.data[off:], p), nil
}

// Flush makes the current contents durable.
func (m *Memory) Flush() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	copy(m.durable, m.data)
	return nil
}

// Crash drops every write since the last Flush.
func (m *Memory) Crash() {
	m.mu.Lock()
	defer m.mu.Unlock()
	copy(m.data, m.durable)
}

// Grow extends the device to size bytes, as an operator growing a volume
// does: the new space reads as zeroes and counts as durable. Size reports
// the new size at once. A smaller size is ignored.
func (m *Memory) Grow(size int64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if n := size - int64(len(m.data)); n > 0 {
		m.data = append(m.data, make([]byte, n)...)
		m.durable = append(m.durable, make([]byte, n)...)
	}
}

// Refresh implements Resizer: Memory's size is always current.
func (m *Memory) Refresh() (int64, error) { return m.Size(), nil }
