// Package atomicfile replaces a file so that a reader (or a crash) sees the
// old content or the new, never a mix: write a temporary file in the same
// directory, fsync it, rename it over the target, fsync the directory.
// The cache snapshot, netsetup's state file and the resolver drop-ins all
// use it.
package atomicfile

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
)

// Write creates or replaces path with what write produces, with mode perm.
// The temporary file is ".<name>.tmp*" in the same directory (its name does
// not end like the target's, so a program scanning the directory for
// "*.conf" never reads a half-written file). On error nothing is replaced
// and the temporary file is removed.
func Write(path string, perm os.FileMode, write func(io.Writer) error) error {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return fmt.Errorf("create temporary file: %w", err)
	}
	tmp := f.Name()
	err = write(f)
	if err == nil {
		err = f.Chmod(perm)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write %s: %w", path, err)
	}
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
	return nil
}
