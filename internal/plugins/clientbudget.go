package plugins

import _ "github.com/localdns/localdns/plugin/clientbudget"
