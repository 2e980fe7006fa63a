// kubecheck decodes every document of a rendered chart (stdin, multi-document YAML) with
// the Kubernetes API's own types, strictly, as an API server with field validation
// Strict does: an unknown or duplicated field, or a value of the wrong type, is an error.
//
// It is how the chart's tests check what `helm template` renders against the real API
// schema without a cluster (helm renders text; it never decodes into the API's types).
// Exit 0: every object decoded; 1: an object did not (one line each on stderr); 2: bad use.
package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"k8s.io/apimachinery/pkg/runtime/serializer"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/yaml"
)

func main() {
	if len(os.Args) != 1 {
		fmt.Fprintln(os.Stderr, "usage: helm template ... | kubecheck")
		os.Exit(2)
	}
	decoder := serializer.NewCodecFactory(scheme.Scheme, serializer.EnableStrict).UniversalDeserializer()
	reader := utilyaml.NewYAMLReader(bufio.NewReader(os.Stdin))
	failed, checked := 0, 0
	for {
		doc, err := reader.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			fmt.Fprintf(os.Stderr, "kubecheck: reading the input: %v\n", err)
			os.Exit(2)
		}
		if len(bytes.TrimSpace(stripComments(doc))) == 0 {
			continue
		}
		asJSON, err := yaml.YAMLToJSONStrict(doc) // strict: a repeated key is an error, not dropped
		if err != nil {
			fmt.Fprintf(os.Stderr, "kubecheck: document %d is not valid YAML: %s\n", checked+1,
				oneLine(err))
			failed++
			checked++
			continue
		}
		checked++
		if _, gvk, err := decoder.Decode(asJSON, nil, nil); err != nil {
			name := "?"
			if gvk != nil {
				name = gvk.Kind
			}
			fmt.Fprintf(os.Stderr, "kubecheck: document %d (%s): %s\n", checked, name, oneLine(err))
			failed++
		}
	}
	fmt.Printf("kubecheck: %d objects, %d refused\n", checked, failed)
	if failed > 0 {
		os.Exit(1)
	}
}

// oneLine is an error's text on one line: the YAML errors list each fault on its own.
func oneLine(err error) string {
	return strings.Join(strings.Fields(err.Error()), " ")
}

// stripComments drops YAML comment lines (helm writes "# Source: ..." before each
// document) so a document of comments only counts as empty.
func stripComments(doc []byte) []byte {
	var out bytes.Buffer
	for _, line := range bytes.Split(doc, []byte("\n")) {
		trimmed := bytes.TrimSpace(line)
		if len(trimmed) == 0 || trimmed[0] == '#' || bytes.Equal(trimmed, []byte("---")) {
			continue
		}
		out.Write(line)
		out.WriteByte('\n')
	}
	return out.Bytes()
}
